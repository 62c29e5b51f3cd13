"""``python -m agent.api --root DIR --socket PATH``: a local runtime and its Docker-API socket, alone.

What ``shoal-agent`` serves next to its cluster session, without the session: for a single host, for
tools that speak the Docker API (``DOCKER_HOST=unix://PATH docker ps``) and for benchmarks. Runs until
SIGTERM or SIGINT; containers keep running after it stops, and the next run adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.api.app import serve_unix
from agent.network.controller import ControllerConfig, NetworkController
from agent.runtime.local import LocalRuntime, LocalRuntimeOptions
from overlay.dns import EmbeddedDNS


async def serve(
    root: Path,
    socket_path: Path,
    options: LocalRuntimeOptions,
    access_log: bool = False,
    network_dir: Path | None = None,
) -> None:
    """Open the runtime (and the host's networking, given a state directory for it), serve them until a
    stop signal, then close them; containers, their networks and published ports stay."""
    runtime = LocalRuntime(root, options)
    await runtime.open()
    network = None
    if network_dir is not None:
        network = NetworkController(ControllerConfig(state_dir=network_dir), EmbeddedDNS())
        await network.start()
    runner = await serve_unix(runtime, socket_path, access_log=access_log, network=network)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving on {socket_path}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if network is not None:
            await network.close()
            await network.dns.close()
        await runtime.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/var/lib/shoal/runtime"), help="state directory")
    parser.add_argument("--socket", type=Path, default=Path("/run/shoal/agent.sock"), help="unix socket")
    parser.add_argument("--storage-driver", default="auto", help="overlay, vfs or auto")
    parser.add_argument("--cgroup-parent", default="/shoal", help="cgroup parent of the containers")
    parser.add_argument(
        "--network-dir",
        type=Path,
        default=None,
        help="state directory of the host's networking: bridge networks and published ports (default: "
        "none, containers get only none or host networking)",
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--access-log", action="store_true", help="log every request (at INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = LocalRuntimeOptions(storage_driver=args.storage_driver, cgroup_parent=args.cgroup_parent)
    asyncio.run(serve(args.root, args.socket, options, args.access_log, args.network_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
