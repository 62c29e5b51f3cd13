"""``shoal-agent``: join a Shoal cluster and run the tasks its managers assign to this node.

    shoal-agent --manager 10.0.0.1:2377,10.0.0.2:2377 --token SWMTKN-1-… --state-dir /var/lib/shoal

The token is used once, to join: the node's certificate, kept in the state dir, is its identity after
that (docs/security.md), so later starts need no token.

With ``--executor sim --sim-count N`` one process hosts N simulated nodes named HOSTNAME-1 … HOSTNAME-N,
each with its own state directory under ``--state-dir``, for testing and measuring the control plane.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import click

from agent.agent import Agent, AgentConfig
from agent.errors import AgentError, SessionRefused
from agent.executor import EXECUTORS, Executor, make_executor
from agent.identity import JoinRefused
from agent.runtime.images.auth import RegistryOptions
from agent.runtime.local import DEFAULT_INSECURE, LocalRuntimeOptions
from api.errors import ShoalError
from api.gctune import tune_for_daemon

log = logging.getLogger("shoal.agent")


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        out[key] = value
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--manager",
    "managers",
    required=True,
    envvar="SHOAL_MANAGER",
    help="Manager address(es), HOST:PORT, comma-separated; more are learnt from the managers.",
)
@click.option(
    "--token",
    default="",
    envvar="SHOAL_JOIN_TOKEN",
    help="The cluster's worker or manager join token (needed only to join, the first time).",
)
@click.option(
    "--state-dir",
    default="/var/lib/shoal/agent",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the agent keeps its node id, certificate and key.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="runc",
    show_default=True,
    help="How tasks run: runc containers, or simulated (no containers).",
)
@click.option("--hostname", default="", help="The node's name (default: the host name).")
@click.option(
    "--advertise-addr", default="", help="The node's cluster address (default: as the manager sees it)."
)
@click.option("--label", "labels", multiple=True, help="Engine label KEY=VALUE (repeatable).")
@click.option(
    "--sim-count", default=1, show_default=True, type=click.IntRange(min=1), help="Simulated nodes to run."
)
@click.option(
    "--sim-start-delay",
    default=0.05,
    show_default=True,
    type=float,
    help="Seconds a simulated task takes to start.",
)
@click.option(
    "--netns-prefix",
    default="shoal-",
    show_default=True,
    help="Prefix of the network namespaces this agent names (several agents on one machine need their own).",
)
@click.option(
    "--insecure-registry",
    "insecure_registries",
    multiple=True,
    help="A registry (HOST:PORT or CIDR) that may be reached over plain HTTP (repeatable), as dockerd's.",
)
@click.option(
    "--engine-socket",
    default="",
    help="Where the node's Docker Engine API listens (default: STATE_DIR/engine.sock).",
)
@click.option("--debug", is_flag=True, help="Log at debug level.")
def cli(
    managers: str,
    token: str,
    state_dir: Path,
    executor: str,
    hostname: str,
    advertise_addr: str,
    labels: tuple[str, ...],
    sim_count: int,
    sim_start_delay: float,
    netns_prefix: str,
    insecure_registries: tuple[str, ...],
    engine_socket: str,
    debug: bool,
) -> None:
    """Run a Shoal agent until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    addrs = [m.strip() for m in managers.split(",") if m.strip()]
    if not addrs:
        raise click.BadParameter("no manager address given", param_hint="--manager")
    if sim_count > 1 and executor != "sim":
        raise click.BadParameter("several nodes in one process need --executor sim", param_hint="--sim-count")
    base = AgentConfig(
        managers=addrs,
        token=token,
        state_dir=state_dir,
        hostname=hostname or socket.gethostname(),
        addr=advertise_addr,
        labels=_labels(labels),
        engine_socket=engine_socket,
    )
    try:
        asyncio.run(_serve(base, executor, sim_count, sim_start_delay, netns_prefix, insecure_registries))
    except (SessionRefused, JoinRefused) as e:
        click.echo(f"shoal-agent: refused by the manager: {e}", err=True)
        sys.exit(1)
    except (AgentError, ShoalError) as e:
        click.echo(f"shoal-agent: {e}", err=True)
        sys.exit(1)


def _configs(base: AgentConfig, count: int) -> list[AgentConfig]:
    if count == 1:
        return [base]
    return [
        AgentConfig(
            managers=base.managers,
            token=base.token,
            state_dir=base.state_dir / f"{base.hostname}-{i}",
            hostname=f"{base.hostname}-{i}",
            addr=base.addr,
            labels=base.labels,
        )
        for i in range(1, count + 1)
    ]


def _executor(
    name: str,
    config: AgentConfig,
    start_delay: float,
    netns_prefix: str = "shoal-",
    insecure_registries: tuple[str, ...] = (),
) -> Executor:
    if name == "sim":
        return make_executor("sim", start_delay=start_delay, hostname=config.hostname)
    if name == "runc":
        return make_executor(
            "runc",
            root=config.state_dir / "runtime",
            hostname=config.hostname,
            labels=config.labels,
            network_dir=config.state_dir / "network",
            advertise_addr=config.addr,
            netns_prefix=netns_prefix,
            options=LocalRuntimeOptions(
                registry=RegistryOptions(insecure=DEFAULT_INSECURE | frozenset(insecure_registries))
            ),
        )
    return make_executor(name)


async def _serve(
    base: AgentConfig,
    executor: str,
    count: int,
    start_delay: float,
    netns_prefix: str = "shoal-",
    insecure_registries: tuple[str, ...] = (),
) -> None:
    configs = _configs(base, count)
    # Made before anything starts, so an executor that cannot run here fails early.
    executors = [_executor(executor, c, start_delay, netns_prefix, insecure_registries) for c in configs]
    # One HTTP client for all simulated nodes: a thousand sessions do not need a thousand pools.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        agents = [Agent(c, e, http=http) for c, e in zip(configs, executors, strict=True)]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runs = [a.start() for a in agents]
        stopper = asyncio.create_task(stop.wait())
        log.info("running %d agent(s) against %s", len(agents), ",".join(base.managers))
        done, _ = await asyncio.wait({stopper, *runs}, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        stopper.cancel()
        for run in runs:
            if run in done and run.exception() is not None:
                raise run.exception()  # type: ignore[misc]


def main() -> None:
    """Console-script entry point."""
    tune_for_daemon()  # api/gctune.py: collector pauses were the tail of every latency
    cli()


if __name__ == "__main__":
    main()
