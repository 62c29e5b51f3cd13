"""The state every command shares: how to reach the manager, and a client made on first use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from swarmctl.client import DEFAULT_CONFIG_DIR, DEFAULT_HOST, Client, TLSOptions

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppContext:
    """Global options, and the client built from them on first use."""

    host: str = DEFAULT_HOST
    tls: TLSOptions | None = None
    debug: bool = False
    #: The directory of client TLS files (``--config``).
    config_dir: str = DEFAULT_CONFIG_DIR
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.host, tls=self.tls, debug=self.debug)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def pass_app(f: F) -> F:
    """Give a command the :class:`AppContext` as its first argument."""
    return click.make_pass_decorator(AppContext, ensure=True)(f)  # type: ignore[return-value]
