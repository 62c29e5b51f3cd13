"""The ``shoal-agent`` daemon's entry point."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point: the daemon is not part of this version yet, so say so and fail."""
    print("shoal-agent: the agent daemon is not available in this version of Shoal", file=sys.stderr)
    sys.exit(2)
