"""The local cluster's published ports, answering on this machine's loopback address.

The cluster's addresses exist only inside its namespaces, so nothing on the machine itself can reach a
published port directly. This small forwarder, started by ``swarmctl cluster up`` and stopped by ``down``,
follows the manager's services and listens, on ``--listen`` (``127.0.0.1``), on every TCP port published
through the routing mesh; each connection it accepts is carried to the same port of one agent host
(``--netns``, ``--target``) over a socket opened inside that host's namespace, where the routing mesh
takes it to one of the service's tasks. Nothing of the cluster is routed or addressed outside it.

    python -m swarmctl.localcluster.forward --socket /var/lib/shoal/local/manager.sock \\
        --netns shoal-h1 --target 10.213.0.3 --listen 127.0.0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp

from agent.network.nsutil import arun_in_netns

log = logging.getLogger("shoal.forward")

#: Seconds between two looks at the services.
INTERVAL = 1.0
_CHUNK = 65536


def published_ports(services: Iterable[dict[str, Any]]) -> set[int]:
    """The TCP ports the services publish through the routing mesh."""
    out = set()
    for svc in services:
        for port in svc.get("status", {}).get("endpoint", {}).get("ports", ()):
            if (
                port.get("publish_mode", "ingress") == "ingress"
                and port.get("protocol", "tcp") == "tcp"
                and port.get("published_port")
            ):
                out.add(int(port["published_port"]))
    return out


def _stream_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class Forwarder:
    """Listeners on ``listen`` for the cluster's published ports, carried to ``target`` in ``netns``."""

    def __init__(self, sock_path: str, netns: str, target: str, listen: str) -> None:
        self.sock_path = sock_path
        self.netns = netns
        self.target = target
        self.listen = listen
        self.servers: dict[int, asyncio.Server] = {}
        self._refused: set[int] = set()

    async def _services(self) -> list[dict[str, Any]]:
        connector = aiohttp.UnixConnector(path=self.sock_path)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get("http://manager/services") as r,
        ):
            r.raise_for_status()
            services: list[dict[str, Any]] = await r.json()
            return services

    async def reconcile(self) -> None:
        """Listen on exactly the ports published now."""
        wanted = published_ports(await self._services())
        for port in sorted(set(self.servers) - wanted):
            self.servers.pop(port).close()
            log.info("stopped forwarding port %d", port)
        self._refused &= wanted
        for port in sorted(wanted - set(self.servers)):
            try:
                self.servers[port] = await asyncio.start_server(
                    functools.partial(self._serve, port=port), self.listen, port, reuse_address=True
                )
            except OSError as exc:
                # Someone else holds the port on this machine: say so once, and try again later.
                if port not in self._refused:
                    log.warning("cannot listen on %s:%d: %s", self.listen, port, exc)
                self._refused.add(port)
                continue
            self._refused.discard(port)
            log.info("forwarding %s:%d to %s:%d in %s", self.listen, port, self.target, port, self.netns)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        try:
            sock = await arun_in_netns(self.netns, _stream_socket)
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (self.target, port)), timeout=10
                )
            except BaseException:
                sock.close()
                raise
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as exc:
            log.info("port %d: the cluster did not take the connection: %s", port, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    async def run(self, interval: float = INTERVAL) -> None:
        """Follow the services until cancelled."""
        try:
            while True:
                try:
                    await self.reconcile()
                except (aiohttp.ClientError, OSError) as exc:
                    log.debug("the manager did not answer: %s", exc)
                await asyncio.sleep(interval)
        finally:
            for server in self.servers.values():
                server.close()


async def _main(args: argparse.Namespace) -> None:
    forwarder = Forwarder(args.socket, args.netns, args.target, args.listen)
    task = asyncio.create_task(forwarder.run(args.interval))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m swarmctl.localcluster.forward``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="the manager's unix socket")
    parser.add_argument("--netns", required=True, help="the agent host's network namespace")
    parser.add_argument("--target", required=True, help="the agent host's address there")
    parser.add_argument("--listen", default="127.0.0.1", help="where to listen on this machine")
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds between looks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
