"""Removes what a stopped runc agent leaves on its host, before its state directory goes. Run by
remove-node.yml on the host, with the Python of Shoal's virtualenv, once the node is drained and its agent
stopped:

    agent_teardown.py STATE_DIR NETNS_PREFIX ADVERTISE_ADDR

Containers outlive their agent on purpose (an agent restart must not stop them), and the tasks of a drained
node end but stay assigned to it, so their containers (stopped, root file systems still mounted), network
sandboxes and networks are still there. They are removed the way the agent removes them: every task's
container through the executor, then every network the agent made (bridges, overlay namespaces, its
nftables table). Whatever that missed — state the agent never wrote, a crash half-way — goes next: every
container of the agent's private runc root, every network namespace named with its prefix, every mount
under its state directory and under /run/shoal/secrets.

Prints one JSON object: ``{"changed": BOOL, "tasks": N, "containers": N, "netns": N, "mounts": N}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from agent.errors import AgentError
from agent.executor_runc import RuncExecutor
from agent.network.errors import NetworkError
from agent.network.nsutil import NETNS_RUN_DIR, remove_netns
from agent.runtime.errors import ContainerRuntimeError
from agent.runtime.snapshots.mounts import mounts_under, unmount_all
from agent.secrets import SECRETS_ROOT


async def remove_tasks(state_dir: Path, netns_prefix: str, advertise_addr: str) -> int:
    """Remove every task's container and sandbox, then the agent's networks; the number of tasks."""
    executor = RuncExecutor(
        state_dir / "runtime",
        network_dir=state_dir / "network",
        advertise_addr=advertise_addr,
        netns_prefix=netns_prefix,
    )
    await executor.describe()  # opens the runtime and the host's networking, as the agent does
    try:
        tasks = sorted(await executor.list_tasks())
        for task_id in tasks:
            await executor.remove(task_id)
        if executor.network is not None:
            await executor.network.teardown()
    finally:
        await executor.close()
    return len(tasks)


def runc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run runc on the agent's private root."""
    return subprocess.run(["runc", "--root", str(root), *args], capture_output=True, text=True, check=False)


def remove_containers(root: Path) -> int:
    """Kill and delete every container of the runc root; how many there were."""
    if not root.is_dir() or shutil.which("runc") is None:
        return 0
    ids = runc(root, "list", "-q").stdout.split()
    for cid in ids:
        runc(root, "kill", cid, "KILL")
        for _ in range(50):  # a killed container is deleted once its process is gone
            if runc(root, "delete", "--force", cid).returncode == 0:
                break
            time.sleep(0.1)
    return len(ids)


def remove_named_netns(prefix: str) -> int:
    """Delete the network namespaces named with ``prefix``; how many there were."""
    if not NETNS_RUN_DIR.is_dir():
        return 0
    names = sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix))
    for name in names:
        remove_netns(name)
    return len(names)


def unmount_below(*dirs: Path) -> int:
    """Unmount everything mounted below ``dirs`` (not a disk mounted on one of them); how many mounts."""
    count = 0
    for directory in dirs:
        base = os.path.realpath(directory)
        points = [p for p in mounts_under(directory) if p != base]
        count += len(points)
        for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
            unmount_all(point)
    return count


def main() -> None:
    """Command-line entry point."""
    if len(sys.argv) != 4 or not sys.argv[2]:
        raise SystemExit(f"usage: {sys.argv[0]} STATE_DIR NETNS_PREFIX ADVERTISE_ADDR")
    state_dir, prefix, addr = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    report = {"tasks": 0, "containers": 0, "netns": 0, "mounts": 0}
    if (state_dir / "runtime").is_dir():
        try:
            report["tasks"] = asyncio.run(remove_tasks(state_dir, prefix, addr))
        except (AgentError, ContainerRuntimeError, NetworkError, OSError) as e:
            # The sweep below still removes the containers, namespaces and mounts.
            print(f"removing the tasks the agent's way failed: {e}", file=sys.stderr)
    report["containers"] = remove_containers(state_dir / "runtime" / "runc")
    report["netns"] = remove_named_netns(prefix)
    report["mounts"] = unmount_below(state_dir, SECRETS_ROOT)
    print(json.dumps({"changed": any(report.values()), **report}))


if __name__ == "__main__":
    main()
