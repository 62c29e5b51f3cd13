"""``swarmctl cluster up|down|status``: a whole cluster on this machine, for trying Shoal out.

``up`` starts an embedded store (etcd, or ZooKeeper with ``--store zookeeper``), a manager and ``--hosts``
agents, each host a network namespace on a private underlay (swarmctl/localcluster), optionally deploys a
stack on it, and says what to try next: among it, the URL of each port the stack publishes, once it answers
on this machine's loopback address. Running it again while the cluster is up changes nothing. ``down``
removes everything ``up`` made. Root only.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import click

from swarmctl.commands.cluster import cluster
from swarmctl.localcluster.cluster import LocalCluster, LocalClusterConfig, LocalClusterError
from swarmctl.localcluster.forward import published_ports
from swarmctl.localcluster.store import STORES

DEFAULT_DIR = "/var/lib/shoal/local"

dir_option = click.option(
    "--dir",
    "base_dir",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the local cluster keeps its state, logs and the manager's socket.",
)


def _local(
    base_dir: Path,
    hosts: int = 3,
    prefix: str = "shoal",
    subnet: str = "10.213.0.0/24",
    forward_addr: str = "127.0.0.1",
    store: str = STORES[0],
) -> LocalCluster:
    if os.geteuid() != 0:
        raise click.ClickException("a local cluster needs root (network namespaces, runc)")
    config = LocalClusterConfig(base_dir, hosts, prefix, subnet, forward_addr=forward_addr, store=store)
    return LocalCluster(config)


@cluster.command("up")
@click.option("--hosts", default=3, show_default=True, type=click.IntRange(1, 50), help="Agent hosts.")
@click.option(
    "--stack", "stack_file", type=click.Path(dir_okay=False, exists=True), help="Deploy this stack."
)
@click.option("--stack-name", default="demo", show_default=True, help="Name of the deployed stack.")
@dir_option
@click.option(
    "--prefix", default="shoal", show_default=True, help="Names of the cluster's network namespaces start so."
)
@click.option(
    "--subnet", default="10.213.0.0/24", show_default=True, help="The hosts' private underlay network."
)
@click.option(
    "--publish-addr",
    default="127.0.0.1",
    show_default=True,
    help="Loopback address on which published ports answer on this machine ('' for none).",
)
@click.option(
    "--store",
    type=click.Choice(STORES),
    default=STORES[0],
    show_default=True,
    help="The KV store the manager keeps the cluster in (run on host0's loopback).",
)
def up(
    hosts: int,
    stack_file: str | None,
    stack_name: str,
    base_dir: Path,
    prefix: str,
    subnet: str,
    publish_addr: str,
    store: str,
) -> None:
    """Start a local cluster (and deploy a stack on it)."""
    lc = _local(base_dir, hosts, prefix=prefix, subnet=subnet, forward_addr=publish_addr, store=store)
    try:
        asyncio.run(lc.up())
    except LocalClusterError as e:
        raise click.ClickException(str(e)) from None
    host = f"unix://{lc.config.socket}"
    if stack_file:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "swarmctl.cli",
                "-H",
                host,
                "stack",
                "deploy",
                "-c",
                stack_file,
                stack_name,
            ],
            check=False,
        )
        if done.returncode != 0:
            raise click.ClickException(f"the stack {stack_name} did not deploy (see above)")
    urls = asyncio.run(_answering_urls(lc, stack_name)) if stack_file else []
    registry = lc.registry_addr()
    click.echo(
        f"\nThe local cluster is up: a manager on {store} and {hosts} agent hosts.\n"
        + "".join(f"  curl {url}\n" for url in urls)
        + f"  export SHOAL_HOST={host}\n"
        "  swarmctl node ls\n"
        + (
            f"  swarmctl stack services {stack_name}\n  swarmctl service ps {stack_name}_web\n"
            if stack_file
            else ""
        )
        + (f"The cluster's registry is {registry} (it holds {registry}/busybox).\n" if registry else "")
        + f"Logs are in {base_dir / 'logs'}; `swarmctl cluster down` removes it all."
    )


async def _answering_urls(lc: LocalCluster, stack: str, timeout: float = 60.0) -> list[str]:
    """The URLs of the ports the stack publishes on this machine, once each answers (or says it does not)."""
    addr = lc.config.forward_addr
    if not addr:
        return []
    connector = aiohttp.UnixConnector(path=str(lc.config.socket))
    async with aiohttp.ClientSession(connector=connector) as http, http.get("http://manager/services") as r:
        services: list[dict[str, Any]] = await r.json()
    mine = [s for s in services if s["spec"]["annotations"]["name"].startswith(f"{stack}_")]
    urls = [f"http://{addr}:{port}/" for port in sorted(published_ports(mine))]
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for url in urls:
            while True:
                try:
                    async with http.get(url) as answer:
                        if answer.status < 500:
                            break
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    click.echo(f"{url} does not answer yet; see {lc.config.base_dir / 'logs'}", err=True)
                    break
                await asyncio.sleep(0.5)
    return urls


@cluster.command("down")
@dir_option
def down(base_dir: Path) -> None:
    """Remove the local cluster: processes, containers, namespaces, state."""
    _local(base_dir).down()
    click.echo("The local cluster is down.")


@cluster.command("status")
@dir_option
def status(base_dir: Path) -> None:
    """Say whether the local cluster runs, and its nodes."""
    info = asyncio.run(_local(base_dir).status())
    if not info["up"]:
        click.echo("The local cluster is not running.")
        return
    nodes = info["nodes"]
    assert isinstance(nodes, list)
    click.echo(f"The local cluster is running ({len(nodes)} nodes; registry {info['registry'] or 'none'}):")
    for n in nodes:
        click.echo(
            f"  {n['status']['description']['hostname']:<10} {n['status']['state']:<8} {n['status']['addr']}"
        )
