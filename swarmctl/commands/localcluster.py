"""``swarmctl cluster up|down|status``: a whole cluster on this machine, for trying Shoal out.

``up`` starts an embedded etcd, a manager and ``--hosts`` agents, each host a network namespace on a private
underlay (swarmctl/localcluster), optionally deploys a stack on it, and says what to try next. Running it
again while the cluster is up changes nothing. ``down`` removes everything ``up`` made. Root only.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import click

from swarmctl.commands.cluster import cluster
from swarmctl.localcluster.cluster import LocalCluster, LocalClusterConfig, LocalClusterError

DEFAULT_DIR = "/var/lib/shoal/local"

dir_option = click.option(
    "--dir",
    "base_dir",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the local cluster keeps its state, logs and the manager's socket.",
)


def _local(base_dir: Path, hosts: int = 3) -> LocalCluster:
    if os.geteuid() != 0:
        raise click.ClickException("a local cluster needs root (network namespaces, runc)")
    return LocalCluster(LocalClusterConfig(base_dir=base_dir, hosts=hosts))


@cluster.command("up")
@click.option("--hosts", default=3, show_default=True, type=click.IntRange(1, 50), help="Agent hosts.")
@click.option(
    "--stack", "stack_file", type=click.Path(dir_okay=False, exists=True), help="Deploy this stack."
)
@click.option("--stack-name", default="demo", show_default=True, help="Name of the deployed stack.")
@dir_option
def up(hosts: int, stack_file: str | None, stack_name: str, base_dir: Path) -> None:
    """Start a local cluster (and deploy a stack on it)."""
    lc = _local(base_dir, hosts)
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
    click.echo(
        f"\nThe local cluster is up: a manager and {hosts} agent hosts.\n"
        f"  export SHOAL_HOST={host}\n"
        "  swarmctl node ls\n"
        + (
            f"  swarmctl stack services {stack_name}\n  swarmctl service ps {stack_name}_web\n"
            if stack_file
            else ""
        )
        + f"Logs are in {base_dir / 'logs'}; `swarmctl cluster down` removes it all."
    )


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
    click.echo(f"The local cluster is running ({len(nodes)} nodes):")
    for n in nodes:
        click.echo(
            f"  {n['status']['description']['hostname']:<10} {n['status']['state']:<8} {n['status']['addr']}"
        )
