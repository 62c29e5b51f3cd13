"""Errors of the agent's host networking (networks, endpoints, published ports, nftables).

One root, :class:`NetworkError`, with typed subclasses that carry data. The local API maps them to Docker's
status codes in one place (not found → 404, conflicts and ports in use → 409, bad options → 400).
"""

from __future__ import annotations

from api.errors import ShoalError


class NetworkError(ShoalError):
    """Root of every error the host networking raises on purpose."""


class InvalidNetworkConfig(NetworkError):
    """An option that cannot be used; ``field`` names it (``subnet``, ``--opt icc``, ``-p``…)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NetworkNotFound(NetworkError):
    """No network has that id, id prefix or name."""

    def __init__(self, network: str) -> None:
        super().__init__(f"network {network} not found")
        self.network = network


class AmbiguousNetwork(NetworkError):
    """An id prefix matches several networks."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(f"network id prefix {prefix!r} is ambiguous ({len(matches)} networks match)")
        self.prefix = prefix
        self.matches = matches


class NetworkExists(NetworkError):
    """A network with that name already exists (``owner`` is its id)."""

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(f"network with name {name} already exists")
        self.name = name
        self.owner = owner


class NetworkInUse(NetworkError):
    """Removal refused: containers are still connected (``containers`` are their ids)."""

    def __init__(self, network: str, containers: list[str]) -> None:
        super().__init__(
            f"error while removing network: network {network} has active endpoints "
            f"({', '.join(sorted(containers))})"
        )
        self.network = network
        self.containers = containers


class PredefinedNetwork(NetworkError):
    """The operation is not allowed on a predefined network (``bridge``, ``host``, ``none``)."""

    def __init__(self, network: str, operation: str) -> None:
        super().__init__(f"{network} is a pre-defined network and cannot be {operation}")
        self.network = network
        self.operation = operation


class PoolOverlap(NetworkError):
    """A requested subnet overlaps an existing network's subnet or a route on the host."""

    def __init__(self, subnet: str, other: str) -> None:
        super().__init__(f"invalid pool request: pool {subnet} overlaps with {other}")
        self.subnet = subnet
        self.other = other


class PoolExhausted(NetworkError):
    """No predefined address pool has a free subnet left (or a network has no free address)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"no available addresses: {what}")
        self.what = what


class AddressInUse(NetworkError):
    """A requested address (``--ip``) is already assigned, reserved or outside the network's range."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"address {address} unavailable: {reason}")
        self.address = address
        self.reason = reason


class SandboxNotFound(NetworkError):
    """No sandbox (network namespace of a container) is known for that container."""

    def __init__(self, container: str) -> None:
        super().__init__(f"container {container} has no network sandbox")
        self.container = container


class SandboxExists(NetworkError):
    """The container already has a sandbox."""

    def __init__(self, container: str) -> None:
        super().__init__(f"container {container} already has a network sandbox")
        self.container = container


class EndpointExists(NetworkError):
    """The container is already connected to the network."""

    def __init__(self, container: str, network: str) -> None:
        super().__init__(f"container {container} is already connected to network {network}")
        self.container = container
        self.network = network


class EndpointNotFound(NetworkError):
    """The container is not connected to the network."""

    def __init__(self, container: str, network: str) -> None:
        super().__init__(f"container {container} is not connected to network {network}")
        self.container = container
        self.network = network


class PortAlreadyAllocated(NetworkError):
    """A host port asked for is taken (by another mapping or by a process on the host)."""

    def __init__(self, host_ip: str, host_port: int, protocol: str, reason: str) -> None:
        where = f"{host_ip}:{host_port}" if host_ip else f"0.0.0.0:{host_port}"
        super().__init__(f"Bind for {where}/{protocol} failed: port is already allocated ({reason})")
        self.host_ip = host_ip
        self.host_port = host_port
        self.protocol = protocol
        self.reason = reason


class NoFreePort(NetworkError):
    """``-P`` or a host port range found no free port."""

    def __init__(self, protocol: str, first: int, last: int) -> None:
        super().__init__(f"no free host port for {protocol} in {first}-{last}")
        self.protocol = protocol
        self.first = first
        self.last = last


class LinkError(NetworkError):
    """A legacy ``--link`` cannot be made (target unknown, not on the default bridge…)."""

    def __init__(self, link: str, reason: str) -> None:
        super().__init__(f"cannot link {link}: {reason}")
        self.link = link
        self.reason = reason


class NetlinkError(NetworkError):
    """A netlink request failed; ``operation`` says what was being done, ``errno`` the kernel's answer."""

    def __init__(self, operation: str, message: str, errno: int = 0) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.message = message
        self.errno = errno


class FirewallError(NetworkError):
    """``nft`` refused a ruleset transaction (nothing was changed); ``output`` is what it printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(f"nftables: {message}" + (f": {output.strip()}" if output.strip() else ""))
        self.message = message
        self.output = output
