"""The host's nftables rules: one ``inet`` table that Shoal owns, rebuilt whole in one transaction.

The table is always rendered from the network state (bridges, published ports, links) and loaded with a
single ``nft -f`` script that creates, deletes and recreates it: nft applies a script atomically, so a
change either lands completely or not at all, and an agent that restarts rebuilds exactly the same table.
Established connections keep their NAT bindings in conntrack, so rebuilding never disturbs them.

What the table does (``shoal`` by default; ``@bridges`` is the set of Shoal's bridges):

* ``nat-prerouting`` / ``nat-output``: traffic to a local address (``fib daddr type local``) — from outside
  or from the host itself — jumps to ``publish``, which DNATs each published port to its container.
* ``nat-postrouting``: masquerade what leaves a non-internal bridge's subnet for elsewhere; masquerade
  connections from the host's loopback to a container (the host reaches ``127.0.0.1:PORT``: the bridge has
  ``route_localnet`` on, and the container must see a source it can answer); and masquerade a container
  reaching its own published port (hairpin).
* ``filter-forward``: internal bridges exchange nothing with other interfaces; published ports (DNATed
  connections) are open to every other network; otherwise bridges are isolated from each other, and with
  ``icc`` off containers on one bridge cannot talk, except along legacy links.
* ``filter-input``: nothing from a container reaches the host's 127.0.0.0/8 (``route_localnet`` would
  otherwise let a crafted packet through; CVE-2020-8558).

Bridged traffic passes the ``inet`` forward hook because ``br_netfilter`` is on (``bridge-nf-call-iptables``),
and there the in/out interfaces are the bridge itself, which is what the icc rules match.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.network.errors import FirewallError
from agent.network.model import PortBinding
from agent.network.nsutil import netns_path

DEFAULT_TABLE = "shoal"


@dataclass(frozen=True)
class BridgeView:
    """What the rules need to know about one bridge network."""

    interface: str
    subnets: tuple[str, ...] = ()
    internal: bool = False
    icc: bool = True
    masquerade: bool = True


@dataclass(frozen=True)
class PortMapping:
    """A published port bound to the container address it leads to."""

    binding: PortBinding
    container_ip: str
    interface: str


@dataclass(frozen=True)
class LinkAccept:
    """A legacy link on a bridge with icc off: ``source`` may reach ``target``'s exposed ``port``."""

    interface: str
    source: str
    target: str
    port: int
    protocol: str = "tcp"


@dataclass
class Ruleset:
    """The table's rules by chain: drivers (bridge, overlay) add their parts, then :meth:`render`."""

    table: str = DEFAULT_TABLE
    bridges: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    postrouting: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    input: list[str] = field(default_factory=list)
    #: Regular chains other parts need (name → rules), e.g. the overlay's service VIPs.
    chains: dict[str, list[str]] = field(default_factory=dict)

    def render(self) -> str:
        """The ``nft -f`` script that replaces the table atomically."""
        t = self.table
        lines = [f"table inet {t}", f"delete table inet {t}", f"table inet {t} {{"]
        elements = ", ".join(_q(b) for b in sorted(set(self.bridges)))
        lines += ["  set bridges {", "    type ifname"]
        if elements:
            lines.append(f"    elements = {{ {elements} }}")
        lines.append("  }")

        def chain(name: str, hook: str, rules: Iterable[str]) -> None:
            lines.append(f"  chain {name} {{")
            if hook:
                lines.append(f"    {hook}")
            lines.extend(f"    {rule}" for rule in rules)
            lines.append("  }")

        chain("publish", "", self.publish)
        for name, rules in sorted(self.chains.items()):
            chain(name, "", rules)
        chain(
            "nat-prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            ["fib daddr type local jump publish"],
        )
        chain(
            "nat-output",
            "type nat hook output priority -100; policy accept;",
            ["fib daddr type local jump publish"],
        )
        chain(
            "nat-postrouting", "type nat hook postrouting priority srcnat; policy accept;", self.postrouting
        )
        chain("filter-forward", "type filter hook forward priority filter; policy accept;", self.forward)
        chain("filter-input", "type filter hook input priority filter; policy accept;", self.input)
        lines.append("}")
        return "\n".join(lines) + "\n"


def _q(name: str) -> str:
    """An interface name as an nft string literal."""
    return json.dumps(name)


def _family(address: str) -> str:
    return "ip6" if ":" in address else "ip"


def _addr(address: str) -> str:
    """An address in a DNAT target: IPv6 needs brackets before ``:port``."""
    return f"[{address}]" if ":" in address else address


def add_bridge_rules(
    rules: Ruleset,
    bridges: Iterable[BridgeView],
    mappings: Iterable[PortMapping] = (),
    links: Iterable[LinkAccept] = (),
) -> None:
    """Add the rules of the bridge networks, their published ports and legacy links to ``rules``."""
    bridges = list(bridges)
    mappings = list(mappings)
    for bridge in bridges:
        rules.bridges.append(bridge.interface)
    for mapping in mappings:
        b, ip = mapping.binding, mapping.container_ip
        fam = _family(ip)
        if b.host_ip and _family(b.host_ip) != fam:
            continue
        match = (
            f"{fam} daddr {b.host_ip} "
            if b.host_ip
            else f"meta nfproto {'ipv6' if fam == 'ip6' else 'ipv4'} "
        )
        rules.publish.append(
            f"{match}{b.protocol} dport {b.host_port} dnat {fam} to {_addr(ip)}:{b.container_port}"
        )
        # Hairpin: a container reaching its own published port must see a source it does not own.
        rules.postrouting.append(
            f"{fam} saddr {ip} {fam} daddr {ip} {b.protocol} dport {b.container_port} masquerade"
        )
    for bridge in bridges:
        br = _q(bridge.interface)
        # The host reaching a container through 127.0.0.1:PORT (route_localnet is on for the bridge).
        rules.postrouting.append(f"oifname {br} ip saddr 127.0.0.0/8 masquerade")
        rules.input.append(f"iifname {br} ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop")
        if not bridge.internal and bridge.masquerade:
            for subnet in bridge.subnets:
                fam = "ip6" if ipaddress.ip_network(subnet).version == 6 else "ip"
                rules.postrouting.append(f"{fam} saddr {subnet} oifname != {br} masquerade")
    rules.forward.append("ct state established,related accept")
    for bridge in bridges:
        if bridge.internal:
            br = _q(bridge.interface)
            rules.forward.append(f"iifname {br} oifname != {br} drop")
            rules.forward.append(f"oifname {br} iifname != {br} drop")
    # Published ports are for everyone (but internal networks, above): other bridges and icc-off neighbours.
    rules.forward.append("ct status dnat accept")
    for bridge in bridges:
        br = _q(bridge.interface)
        # Isolation between Shoal's bridge networks (Docker's DOCKER-ISOLATION chains).
        rules.forward.append(f"iifname {br} oifname != {br} oifname @bridges drop")
    by_bridge: dict[str, list[LinkAccept]] = {}
    for link in links:
        by_bridge.setdefault(link.interface, []).append(link)
    for bridge in bridges:
        if bridge.icc:
            continue
        br = _q(bridge.interface)
        for link in by_bridge.get(bridge.interface, []):
            fam = _family(link.target)
            rules.forward.append(
                f"iifname {br} oifname {br} {fam} saddr {link.source} {fam} daddr {link.target} "
                f"{link.protocol} dport {link.port} accept"
            )
            rules.forward.append(
                f"iifname {br} oifname {br} {fam} saddr {link.target} {fam} daddr {link.source} "
                f"{link.protocol} sport {link.port} accept"
            )
        rules.forward.append(f"iifname {br} oifname {br} drop")


class Firewall:
    """Loads and removes Shoal's table with the ``nft`` command, in the host's namespace."""

    def __init__(self, table: str = DEFAULT_TABLE, netns: str | None = None) -> None:
        self.table = table
        self._netns = netns
        #: The script last loaded: most changes (a container without published ports joining a network)
        #: leave the rules as they are, and running nft for nothing would dominate the time to attach.
        self._loaded: str | None = None

    def _argv(self, *args: str) -> list[str]:
        # nft has no namespace option; nsenter puts it in the host namespace the controller manages.
        prefix = ["nsenter", f"--net={netns_path(self._netns)}", "--"] if self._netns else []
        return [*prefix, "nft", *args]

    async def _run(self, *args: str, script: str | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self._argv(*args),
            stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(script.encode() if script is not None else None)
        if proc.returncode != 0:
            raise FirewallError(f"nft {' '.join(args)} failed (exit {proc.returncode})", err.decode())
        return out.decode()

    async def apply(self, rules: Ruleset, *, force: bool = False) -> None:
        """Replace the table with ``rules`` in one transaction (nothing changes if nft refuses it).

        Skipped when the rules are those this object loaded last, unless ``force`` (the agent starting).
        """
        if rules.table != self.table:
            raise FirewallError(f"ruleset is for table {rules.table}, not {self.table}")
        script = rules.render()
        if script == self._loaded and not force:
            return
        self._loaded = None
        await self._run("-f", "-", script=script)
        self._loaded = script

    async def remove(self) -> None:
        """Delete the table (and with it every rule Shoal made); a missing table is not an error."""
        self._loaded = None
        await self._run("-f", "-", script=f"table inet {self.table}\ndelete table inet {self.table}\n")

    async def dump(self) -> list[dict[str, Any]]:
        """The table's objects as ``nft -j`` gives them (empty when the table does not exist)."""
        try:
            text = await self._run("-j", "list", "table", "inet", self.table)
        except FirewallError:
            return []
        data = json.loads(text or "{}")
        return [item for item in data.get("nftables", []) if "metainfo" not in item]

    async def rules(self) -> list[str]:
        """The table's rules as text lines (for ``inspect`` output and debugging)."""
        try:
            text = await self._run("list", "table", "inet", self.table)
        except FirewallError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]
