"""Errors of the overlay driver.

:class:`OverlayError` is the root. It derives from the host networking's root
(:class:`~agent.network.errors.NetworkError`) because the overlay is one of its drivers: the local API's
mapping of network errors to statuses applies to it unchanged.
"""

from __future__ import annotations

from agent.network.errors import NetworkError


class OverlayError(NetworkError):
    """Root of every error the overlay driver raises on purpose."""


class InvalidOverlayConfig(OverlayError):
    """An overlay network cannot be built as asked; ``network`` names it, ``field`` the option at fault."""

    def __init__(self, network: str, field: str, message: str) -> None:
        super().__init__(f"overlay network {network}: {field}: {message}")
        self.network = network
        self.field = field
        self.message = message


class AdvertiseAddressError(OverlayError):
    """The host's cluster address (the VXLAN tunnel endpoint) is not an address of the host."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} is not an address of this host; VXLAN tunnels need the host's own")
        self.address = address


class LoadBalancerError(OverlayError):
    """``nft`` refused the virtual IP rules of a container (nothing changed there)."""

    def __init__(self, container: str, output: str) -> None:
        super().__init__(f"virtual IP rules for container {container[:12]}: {output.strip()}")
        self.container = container
        self.output = output


class MeshError(OverlayError):
    """``nft`` refused the routing mesh's table of the host (the one loaded before stays)."""

    def __init__(self, output: str) -> None:
        super().__init__(f"routing mesh rules: {output.strip()}")
        self.output = output
