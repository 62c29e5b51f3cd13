"""Service virtual IPs, load-balanced with nftables inside each container's namespace.

Docker balances a virtual IP with IPVS; this kernel has no IPVS, so a container's own namespace carries a
small nftables table instead (``ip shoal_lb``): connections the container opens to a virtual IP are
DNATed, in the ``output`` hook, to one of the service's serving tasks, taken in turn (``numgen inc``, the
round robin IPVS defaults to). Every protocol and port of the virtual IP is balanced, as Docker's
firewall-mark rules do. A virtual IP whose service has no serving task refuses connections at once (a TCP
reset, ICMP unreachable otherwise) instead of letting them time out.

The table is rendered whole and loaded with one ``nft -f`` script that creates, deletes and recreates it,
which nft applies atomically: a scale up or down swaps the backends in one step, and connections already
open keep their backend through their conntrack entry.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence

from agent.network.nsutil import netns_path
from overlay.errors import LoadBalancerError

LB_TABLE = "shoal_lb"


def render(vips: Mapping[str, Sequence[str]], table: str = LB_TABLE) -> str:
    """The ``nft -f`` script for a container reaching ``vips`` (virtual IP → backend addresses)."""
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    balanced = {vip: list(b) for vip, b in vips.items() if b}
    refused = sorted((vip for vip, b in vips.items() if not b), key=ipaddress.IPv4Address)
    lines += ["  chain vip-dnat {", "    type nat hook output priority -100; policy accept;"]
    for vip in sorted(balanced, key=ipaddress.IPv4Address):
        backends = balanced[vip]
        pairs = ", ".join(f"{i} : {ip}" for i, ip in enumerate(backends))
        lines.append(f"    ip daddr {vip} dnat to numgen inc mod {len(backends)} map {{ {pairs} }}")
    lines += ["  }", "  chain vip-refuse {", "    type filter hook output priority filter; policy accept;"]
    for vip in refused:
        lines.append(f"    ip daddr {vip} meta l4proto tcp reject with tcp reset")
        lines.append(f"    ip daddr {vip} reject")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def removal(table: str = LB_TABLE) -> str:
    """The ``nft -f`` script that removes the table (and is harmless when it does not exist)."""
    return f"table ip {table}\ndelete table ip {table}\n"


async def run_nft(netns: str, script: str, what: str) -> None:
    """Load ``script`` with ``nft -f -`` inside ``netns`` (nft has no namespace option: nsenter)."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net={netns_path(netns)}",
        "--",
        "nft",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise LoadBalancerError(what, err.decode() or f"nft exited with {proc.returncode}")


class VirtualIPs:
    """The virtual IP tables of the containers on this host, each loaded only when it changes."""

    def __init__(self, table: str = LB_TABLE) -> None:
        self.table = table
        #: container id → (namespace, script loaded there).
        self._loaded: dict[str, tuple[str, str]] = {}

    async def apply(self, container_id: str, netns: str, vips: Mapping[str, Sequence[str]]) -> bool:
        """Give the container exactly ``vips``; whether anything was loaded."""
        script = render(vips, self.table) if vips else removal(self.table)
        if self._loaded.get(container_id) == (netns, script):
            return False
        self._loaded.pop(container_id, None)
        await run_nft(netns, script, container_id)
        self._loaded[container_id] = (netns, script)
        return True

    def forget(self, container_id: str) -> None:
        """The container is gone (its namespace took the table with it)."""
        self._loaded.pop(container_id, None)

    def containers(self) -> list[str]:
        """Containers whose table this object has loaded."""
        return list(self._loaded)
