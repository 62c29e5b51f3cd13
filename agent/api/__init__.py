"""The agent's local API: its runtime on a unix socket, in the Docker Engine API's paths and JSON shapes.

``create_app(runtime, network=None)`` builds the aiohttp application, ``serve_unix(runtime, path, …,
network=None)`` serves it; given the host's network controller, containers get bridge networking and
published ports (:mod:`.networking`). Routes are split by resource (:mod:`.system`, :mod:`.containers`,
:mod:`.logs`, :mod:`.execs`, :mod:`.images`, :mod:`.volumes`) and errors become Docker's status codes in
:mod:`.errors`. ``python -m agent.api`` runs a runtime and its socket on their own (see
:mod:`agent.api.__main__`).
"""

from agent.api.app import create_app, serve_unix

__all__ = ["create_app", "serve_unix"]
