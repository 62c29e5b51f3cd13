"""``make up``, every walkthrough of examples/guide, ``make down``: as a new user would run them.

The cluster is brought up with the very command ``make up`` runs (``swarmctl cluster up`` with the demo
stack), under a prefix, underlay and loopback address of this test's own, so it can run beside a user's
cluster. ``up`` a second time changes nothing; ``down`` twice is harmless and leaves nothing behind:
namespaces, links, mounts, nftables tables, processes, state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
GUIDE = REPO / "examples" / "guide"
WALKTHROUGHS = sorted(p.name for p in GUIDE.glob("[0-9]*.sh"))
PREFIX = f"ex{os.getpid() % 10000}"
SUBNET = "10.213.6.0/24"
ADDR = "127.213.6.1"


def swarmctl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def up(base: Path) -> subprocess.CompletedProcess[str]:
    return swarmctl(
        "cluster", "up", "--hosts", "3", "--stack", "examples/demo-stack.yml", "--dir", str(base),
        "--prefix", PREFIX, "--subnet", SUBNET, "--publish-addr", ADDR,
    )  # fmt: skip


def down(base: Path) -> subprocess.CompletedProcess[str]:
    return swarmctl("cluster", "down", "--dir", str(base))


def ours(name: str) -> bool:
    """Names of what a cluster (its hosts, agents and networks) could make in the machine's namespace."""
    return name.startswith((PREFIX, "shoal", "shbr-", "shv", "vx-", "ov", "ul"))


def machine_state(base: Path) -> dict[str, list[str]]:
    """What of a cluster could be left on the machine, as sorted lists."""
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    with open("/proc/self/mounts", encoding="utf-8") as f:
        mounts = [line.split()[1] for line in f]
    processes = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(base) in cmdline:
                processes.append(f"{pid}: {cmdline}")
    return {
        "namespaces": sorted(n for n in os.listdir("/run/netns") if n.startswith(PREFIX)),
        "links": sorted(link["ifname"] for link in json.loads(links) if ours(link["ifname"])),
        "nft tables": sorted(t for t in tables.splitlines() if "shoal" in t),
        "mounts": sorted(m for m in mounts if m.startswith(str(base))),
        "processes": sorted(processes),
        "state": sorted(str(p) for p in base.glob("*")),
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, list[str]]]]:
    base = tmp_path_factory.mktemp("examples") / "local"
    before = machine_state(base)
    try:
        first = up(base)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"curl http://{ADDR}:8080/" in first.stdout, first.stdout
        yield base, before
    finally:
        down(base)


def get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode().strip()  # type: ignore[no-any-return]


def test_up_prints_a_url_that_answers_from_this_machine(cluster: tuple[Path, dict[str, list[str]]]) -> None:
    # Every answer names the replica that served it: connections are spread over the front end's three.
    seen = {get(f"http://{ADDR}:8080/") for _ in range(6)}
    assert len(seen) == 3, seen


def test_up_again_changes_nothing(cluster: tuple[Path, dict[str, list[str]]]) -> None:
    base, _ = cluster
    host = f"unix://{base / 'manager.sock'}"
    before = swarmctl("-H", host, "service", "ps", "-q", "demo_web").stdout
    again = up(base)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is up to date" in again.stdout + again.stderr
    assert swarmctl("-H", host, "service", "ps", "-q", "demo_web").stdout == before


@pytest.mark.parametrize("script", WALKTHROUGHS)
def test_walkthrough(script: str, cluster: tuple[Path, dict[str, list[str]]]) -> None:
    base, _ = cluster
    env = {
        **os.environ,
        "SHOAL_HOST": f"unix://{base / 'manager.sock'}",
        "SHOAL_PUBLISHED_ADDR": ADDR,
        "SWARMCTL": str(Path(sys.executable).with_name("swarmctl")),
    }
    done = subprocess.run(
        ["bash", str(GUIDE / script)], capture_output=True, text=True, env=env, timeout=240, cwd=REPO
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert "FAILED" not in done.stdout + done.stderr


def test_down_twice_leaves_the_machine_as_it_was(cluster: tuple[Path, dict[str, list[str]]]) -> None:
    base, before = cluster
    for _ in range(2):
        gone = down(base)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert machine_state(base) == before
