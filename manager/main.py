"""``shoal-manager``: run one manager of a Shoal cluster."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from api.errors import ShoalError
from api.gctune import tune_for_daemon
from manager.daemon import Manager, ManagerConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_url",
    envvar="SHOAL_STORE",
    default="etcd://127.0.0.1:2379/shoal",
    show_default=True,
    help="Cluster store URL: etcd://h1:2379,h2:2379/prefix, zk://h:2181/prefix, consul://h:8500/prefix.",
)
@click.option(
    "--listen-addr", default="0.0.0.0:2377", show_default=True, help="TCP address for the API and agents."
)
@click.option(
    "--socket", default="/run/shoal/manager.sock", show_default=True, help="Unix socket for local clients."
)
@click.option(
    "--advertise-addr",
    default="",
    help="host:port agents reach this manager at (default: the listen address).",
)
@click.option("--manager-id", default="", help="This manager's id (default: a new random one).")
@click.option(
    "--state-dir", default="/var/lib/shoal/manager", show_default=True, help="This manager's own files."
)
@click.option("--election-ttl", default=2.0, show_default=True, help="Leader lease TTL in seconds.")
@click.option(
    "--tls-san",
    "cert_names",
    multiple=True,
    help="Another host name or IP address for this manager's certificate (repeatable).",
)
@click.option("--debug", is_flag=True, help="Log at debug level.")
def cli(
    store_url: str,
    listen_addr: str,
    socket: str,
    advertise_addr: str,
    manager_id: str,
    state_dir: str,
    election_ttl: float,
    cert_names: tuple[str, ...],
    debug: bool,
) -> None:
    """Run a Shoal manager until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = ManagerConfig(
        store_url=store_url,
        listen=listen_addr,
        socket=socket,
        advertise=advertise_addr,
        election_ttl=election_ttl,
        state_dir=state_dir,
        cert_names=cert_names,
    )
    if manager_id:
        config.manager_id = manager_id
    try:
        asyncio.run(_serve(config))
    except ShoalError as e:
        click.echo(f"shoal-manager: {e}", err=True)
        sys.exit(1)
    except OSError as e:  # a port or socket that cannot be bound
        click.echo(f"shoal-manager: {e}", err=True)
        sys.exit(1)


async def _serve(config: ManagerConfig) -> None:
    manager = Manager(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await manager.start()
        logging.getLogger("shoal.manager").info(
            "manager %s serving on %s %s", config.manager_id, config.listen, config.socket
        )
        await stop.wait()
    finally:
        await manager.stop()


def main() -> None:
    """Console-script entry point."""
    tune_for_daemon()  # api/gctune.py: collector pauses were the tail of every latency
    cli()


if __name__ == "__main__":
    main()
