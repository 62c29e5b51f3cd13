"""Restart policies and Docker's growing back-off, as pure functions.

The delay before a restart starts at 100 ms and doubles with each restart, up to one minute; a run that
lasted 10 s or more resets it. ``on-failure:N`` restarts a failing container at most N times.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.runtime.containers.config import RestartPolicy

INITIAL_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0
MULTIPLIER = 2


@dataclass(frozen=True)
class RestartDecision:
    """Whether to restart, and after how long; ``delay`` is also the base of the next back-off step."""

    restart: bool
    delay: float


def decide(
    policy: RestartPolicy,
    exit_code: int,
    manually_stopped: bool,
    restart_count: int,
    ran_for: float,
    previous_delay: float,
) -> RestartDecision:
    """Docker's restart manager: should a container that just exited be started again, and when?"""
    if policy.name == "no" or manually_stopped:
        return RestartDecision(False, previous_delay)
    delay = 0.0 if ran_for >= RESET_AFTER else previous_delay
    delay = INITIAL_DELAY if delay == 0 else min(delay * MULTIPLIER, MAX_DELAY)
    if policy.name in ("always", "unless-stopped"):
        restart = True
    else:  # on-failure
        limit = policy.maximum_retry_count
        restart = exit_code != 0 and (limit == 0 or restart_count < limit)
    return RestartDecision(restart, delay)
