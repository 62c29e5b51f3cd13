"""A container's ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf``, as Docker writes them.

Pure text generation. Containers on user-defined networks get the embedded DNS server (``127.0.0.11``,
``ndots:0``) and their ``--dns`` servers become its upstreams; containers on the default bridge get the
servers themselves (the host's, without loopback ones a container cannot reach, or Docker's public
defaults when nothing is left).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.network.errors import InvalidNetworkConfig
from agent.network.model import DNSConfig

EMBEDDED_DNS = "127.0.0.11"
#: ``--add-host name:host-gateway`` stands for the default bridge's gateway address.
HOST_GATEWAY = "host-gateway"
DEFAULT_NAMESERVERS = ("8.8.8.8", "8.8.4.4")


@dataclass(frozen=True)
class ResolvConf:
    """The parts of a resolv.conf that matter here."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class EtcFiles:
    """The three files' contents for one container."""

    hosts: str
    hostname: str
    resolv_conf: str

    def write(self, directory: Path) -> dict[str, Path]:
        """Write ``hosts``, ``hostname`` and ``resolv.conf`` into ``directory``; returns name → path."""
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, text in (
            ("hosts", self.hosts),
            ("hostname", self.hostname),
            ("resolv.conf", self.resolv_conf),
        ):
            path = directory / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
            out[name] = path
        return out


def parse_resolv_conf(text: str) -> ResolvConf:
    """Nameservers, search domains and options of a resolv.conf (later ``search`` lines win, as in libc)."""
    servers: list[str] = []
    search: tuple[str, ...] = ()
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        key, *values = line.split()
        if key == "nameserver" and values:
            servers.append(values[0])
        elif key in ("search", "domain"):
            search = tuple(values)
        elif key == "options":
            options.extend(values)
    return ResolvConf(tuple(servers), search, tuple(options))


def host_resolv_conf(path: Path = Path("/etc/resolv.conf")) -> ResolvConf:
    """The host's resolver configuration (empty if the file is missing)."""
    try:
        return parse_resolv_conf(path.read_text())
    except OSError:
        return ResolvConf()


def _is_loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%")[0]).is_loopback
    except ValueError:
        return False


def _search_line(search: tuple[str, ...]) -> list[str]:
    # "--dns-search ." means: no search domains at all.
    domains = [d for d in search if d != "."]
    return [f"search {' '.join(domains)}"] if domains else []


def resolv_conf(dns: DNSConfig, host: ResolvConf, *, embedded: bool, upstreams: Iterable[str] = ()) -> str:
    """A container's resolv.conf: the embedded server, or real nameservers on the default bridge.

    ``upstreams`` (embedded only) are where the embedded server forwards, noted in a comment as Docker does.
    """
    search = dns.search or host.search
    lines: list[str] = []
    if embedded:
        lines.append(f"nameserver {EMBEDDED_DNS}")
        lines += _search_line(search)
        options = list(dns.options or [o for o in host.options if not o.startswith("ndots:")])
        if not any(o.startswith("ndots:") for o in options):
            options.insert(0, "ndots:0")
        lines.append(f"options {' '.join(options)}")
        upstream = ", ".join(upstreams or dns.servers or host.nameservers) or "none"
        lines.append(f"# Upstream servers of the embedded DNS: {upstream}")
    else:
        servers = list(dns.servers) or [s for s in host.nameservers if not _is_loopback(s)]
        lines += [f"nameserver {s}" for s in (servers or DEFAULT_NAMESERVERS)]
        lines += _search_line(search)
        options = list(dns.options or host.options)
        if options:
            lines.append(f"options {' '.join(options)}")
    return "\n".join(lines) + "\n"


def upstream_servers(dns: DNSConfig, host: ResolvConf) -> tuple[str, ...]:
    """Where the embedded DNS forwards a container's other queries: ``--dns``, else the host's servers.

    The forwarding happens from the agent's own namespace, so a loopback resolver of the host works too.
    """
    return tuple(dns.servers) or tuple(host.nameservers)


def hostname_file(hostname: str) -> str:
    """``/etc/hostname``."""
    return f"{hostname}\n"


def hosts_file(
    hostname: str,
    domainname: str,
    addresses: Iterable[str],
    extra_hosts: Iterable[tuple[str, str]] = (),
    link_entries: Iterable[tuple[str, Iterable[str]]] = (),
    *,
    ipv6: bool = True,
) -> str:
    """``/etc/hosts``: localhost, the IPv6 names, ``--add-host`` entries, links, then the container itself."""
    lines = ["127.0.0.1\tlocalhost"]
    if ipv6:
        lines += [
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "fe00::0\tip6-localnet",
            "ff00::0\tip6-mcastprefix",
            "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters",
        ]
    lines += [f"{address}\t{name}" for name, address in extra_hosts]
    lines += [f"{address}\t{' '.join(names)}" for address, names in link_entries]
    own = f"{hostname}.{domainname}\t{hostname}" if domainname else hostname
    lines += [f"{address.split('/')[0]}\t{own}" for address in addresses]
    return "\n".join(lines) + "\n"


def parse_add_host(entry: str) -> tuple[str, str]:
    """``--add-host name:address`` (or ``name=address``; IPv6 in brackets; ``host-gateway`` kept as is)."""
    sep = "=" if "=" in entry else ":"
    name, _, address = entry.partition(sep)
    address = address.strip().strip("[]")
    if not name or not address:
        raise InvalidNetworkConfig("--add-host", f"invalid entry {entry!r}: expected name:address")
    if address == HOST_GATEWAY:
        return name.strip(), address
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise InvalidNetworkConfig("--add-host", f"invalid address in {entry!r}") from None
    return name.strip(), address
