"""``swarmctl container …``: one-off containers placed by the cluster's scheduler (classic Swarm).

``run`` asks the manager to create the container where the scheduler places it (``-e constraint:…``,
``--constraint``, ``--node``), then drives the chosen node's Docker Engine API through the manager
(``/nodes/{id}/engine/…``): start, follow the logs, wait for the exit code, remove. The other commands
find a container by id, id prefix, name or ``NODE/NAME`` (``GET /containers/{ref}/json``) and act on its
node's engine the same way.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import click

from swarmctl import filters
from swarmctl.client import Client
from swarmctl.commands import container_flags as flags
from swarmctl.commands.common import remove_each
from swarmctl.commands.engine import EngineNode, created_at
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import SwarmctlError
from swarmctl.logs import parse_since, parse_tail
from swarmctl.output import (
    filter_option,
    format_option,
    no_trunc_option,
    print_objects,
    print_rows,
    quiet_option,
    render_table,
    short_id,
)
from swarmctl.streams import RAW_STREAM, copy_output
from swarmctl.units import since

CONTAINER_COLUMNS = [
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("RunningFor", "CREATED"),
    ("Status", "STATUS"),
    ("Ports", "PORTS"),
    ("Node", "NODE"),
    ("Names", "NAMES"),
]
#: ``--filter`` keys: the engines' (sent to the manager), and ``node`` (matched here).
FILTER_KEYS = ["ancestor", "id", "label", "name", "node", "status"]


@click.group()
def container() -> None:
    """Manage one-off containers on the cluster's nodes."""


@dataclass(frozen=True)
class Located:
    """A container found by reference: where it runs, its full id and name, its inspect body."""

    node: EngineNode
    id: str
    name: str
    data: dict[str, Any]


def locate(client: Client, ref: str) -> Located:
    data = client.container(ref)
    return Located(
        EngineNode.from_json(data.get("Node")), str(data["Id"]), str(data.get("Name", "")).lstrip("/"), data
    )


def _output() -> tuple[BinaryIO, BinaryIO]:
    """Standard output and error as bytes (a container's output passes through unchanged)."""
    sys.stdout.flush()
    sys.stderr.flush()
    return sys.stdout.buffer, sys.stderr.buffer


def _exit(code: int) -> None:
    click.get_current_context().exit(code)


# --- run ---------------------------------------------------------------------------------------------------
@container.command(context_settings={"allow_interspersed_args": False})
@flags.run_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def run(app: AppContext, image: str, command: tuple[str, ...], **o: Any) -> None:
    """Create and run a container where the scheduler places it: IMAGE [COMMAND] [ARG...].

    Without -d, print its output until it exits and exit with its exit code."""
    body = flags.create_body(o, image, command)
    client = app.client
    reply = client.create_container(body, o["name"], node=o["node"])
    node = EngineNode.from_json(reply.get("Node"))
    cid = str(reply["Id"])
    try:
        client.engine(node.id, "POST", f"/containers/{cid}/start")
    except SwarmctlError as e:
        failure = SwarmctlError(
            f"cannot start container {cid[:12]} on {node.name}: {e}{_discard(client, node, cid)}"
        )
        failure.exit_code = e.exit_code  # an unreachable manager stays exit code 2
        raise failure from None
    # Shown once it runs: a failure is one line, whatever the engine warned about.
    for warning in reply.get("Warnings") or ():
        click.echo(f"WARNING: {warning}", err=True)
    if o["detach"]:
        click.echo(cid)
        return
    try:
        code = _follow_to_exit(client, node, cid)
    except KeyboardInterrupt:
        if o["rm"]:
            _discard(client, node, cid)
        raise
    if o["rm"]:
        client.engine(node.id, "DELETE", f"/containers/{cid}", query={"v": "1", "force": "1"})
    _exit(code)


def _discard(client: Client, node: EngineNode, cid: str) -> str:
    """Remove a container that is of no use; what to add to an error message if that fails too."""
    try:
        client.engine(node.id, "DELETE", f"/containers/{cid}", query={"v": "1", "force": "1"})
    except SwarmctlError as e:
        return f" (removing it failed too: {e})"
    return ""


def _follow_to_exit(client: Client, node: EngineNode, cid: str) -> int:
    """Print the container's output until it stops; its exit code."""
    out, err = _output()
    query = {"stdout": "1", "stderr": "1", "follow": "1"}
    with client.engine_stream(node.id, "GET", f"/containers/{cid}/logs", query=query) as resp:
        copy_output(resp.chunks(), out, err, multiplexed=resp.content_type != RAW_STREAM)
    status = client.engine(node.id, "POST", f"/containers/{cid}/wait") or {}
    error = status.get("Error") or {}
    if isinstance(error, dict) and error.get("Message"):
        raise SwarmctlError(f"waiting for container {cid[:12]}: {error['Message']}")
    return int(status.get("StatusCode", 0))


# --- ls ----------------------------------------------------------------------------------------------------
def ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when cut (Docker's)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def format_ports(ports: Sequence[dict[str, Any]], node: EngineNode) -> str:
    """``10.0.0.2:8080->80/tcp, 443/tcp``: a port published on every address shows the node's (classic
    Swarm's ``docker ps``), so it says where to connect."""
    out: list[str] = []
    ordered = sorted(
        ports, key=lambda p: (p.get("PrivatePort", 0), p.get("Type", ""), p.get("PublicPort", 0))
    )
    for p in ordered:
        kind = p.get("Type") or "tcp"
        if p.get("PublicPort"):
            ip = str(p.get("IP") or "")
            if ip in ("", "0.0.0.0", "::") and node.host:
                ip = node.host
            host = f"[{ip}]" if ":" in ip else ip
            text = f"{host}:{p['PublicPort']}->{p.get('PrivatePort')}/{kind}"
        else:
            text = f"{p.get('PrivatePort')}/{kind}"
        if text not in out:
            out.append(text)
    return ", ".join(out)


def _created(ts: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(ts), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.fromtimestamp(0, UTC)


def container_row(c: dict[str, Any], no_trunc: bool = False, now: datetime | None = None) -> dict[str, str]:
    """One ``container ls`` row; its keys are the template fields (Docker's, plus ``Node``)."""
    node = EngineNode.from_json(c.get("Node"))
    names = [str(n).lstrip("/") for n in c.get("Names") or ()]
    command = str(c.get("Command") or "")
    image = str(c.get("Image") or "")
    if image.startswith("sha256:") and not no_trunc:
        image = image[len("sha256:") :][:12]
    labels = c.get("Labels") or {}
    networks = (c.get("NetworkSettings") or {}).get("Networks") or {}
    created = _created(c.get("Created"))
    return {
        "ID": short_id(str(c.get("Id", "")), no_trunc),
        "Image": image,
        "Command": json.dumps(command if no_trunc else ellipsis(command, 20), ensure_ascii=False),
        "CreatedAt": created_at(created),
        "RunningFor": since(created, now),
        "Ports": format_ports(c.get("Ports") or (), node),
        "State": str(c.get("State") or ""),
        "Status": str(c.get("Status") or ""),
        "Node": node.name,
        "Names": ",".join(f"{node.name}/{n}" for n in names),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Mounts": ",".join(str(m.get("Name") or m.get("Source") or "") for m in c.get("Mounts") or ()),
        "Networks": ",".join(sorted(networks)),
    }


def _on_node(c: dict[str, Any], wanted: str) -> bool:
    node = EngineNode.from_json(c.get("Node"))
    return node.name == wanted or (bool(wanted) and node.id.startswith(wanted))


def list_containers(client: Client, show_all: bool, filter_args: Sequence[str]) -> list[dict[str, Any]]:
    """The containers ``ls`` shows, newest first."""
    parsed = filters.parse(filter_args, FILTER_KEYS)
    on_nodes = parsed.pop("node", [])
    engine_filters = {key: {v: True for v in values} for key, values in parsed.items()}
    items = client.containers(stopped=show_all, filters=engine_filters or None)
    if on_nodes:
        items = [c for c in items if any(_on_node(c, v) for v in on_nodes)]
    return sorted(items, key=lambda c: int(c.get("Created") or 0), reverse=True)


@container.command("ls")
@click.option(
    "-a", "--all", "show_all", is_flag=True, help="Show all containers (default shows just running)."
)
@filter_option
@format_option
@quiet_option
@no_trunc_option
@pass_app
def ls(
    app: AppContext,
    show_all: bool,
    filter_args: tuple[str, ...],
    fmt: str | None,
    quiet: bool,
    no_trunc: bool,
) -> None:
    """List containers (filters: ancestor, id, label, name, node, status)."""
    items = list_containers(app.client, show_all, filter_args)
    rows = [container_row(c, no_trunc) for c in items]
    print_rows(rows, CONTAINER_COLUMNS, fmt=fmt, quiet=quiet)


# --- logs / exec -------------------------------------------------------------------------------------------
@container.command()
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option(
    "-n", "--tail", default="all", help='Number of lines to show from the end of the logs (or "all").'
)
@click.option(
    "--since", default="", help="Show logs since a timestamp (2013-01-02T13:23:37Z) or relative (42m)."
)
@click.option("--until", default="", help="Show logs before a timestamp or relative (42m).")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
@click.argument("ref", metavar="CONTAINER")
@pass_app
def logs(
    app: AppContext, ref: str, follow: bool, tail: str, since: str, until: str, timestamps: bool
) -> None:
    """Fetch the logs of a container."""
    query = {
        "stdout": "1",
        "stderr": "1",
        "follow": "1" if follow else None,
        "tail": parse_tail(tail),
        "since": parse_since(since) if since else None,
        "until": parse_since(until) if until else None,
        "timestamps": "1" if timestamps else None,
    }
    client = app.client
    found = locate(client, ref)
    out, err = _output()
    try:
        with client.engine_stream(found.node.id, "GET", f"/containers/{found.id}/logs", query=query) as resp:
            copy_output(resp.chunks(), out, err, multiplexed=resp.content_type != RAW_STREAM)
    except KeyboardInterrupt:
        if not follow:
            raise  # the usual way to stop following is not an interruption


@container.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run the command in the background.")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable.")
@click.option("--env-file", multiple=True, metavar="FILE", help="Read environment variables from a file.")
@click.option("-u", "--user", default="", help="Username or UID (format: <name|uid>[:<group|gid>]).")
@click.option("-w", "--workdir", default="", help="Working directory inside the container.")
@click.option("-t", "--tty", is_flag=True, hidden=True)
@click.option("-i", "--interactive", is_flag=True, hidden=True)
@click.argument("ref", metavar="CONTAINER")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def exec_(app: AppContext, ref: str, command: tuple[str, ...], **o: Any) -> None:
    """Run a command in a running container: CONTAINER COMMAND [ARG...]; exits with its exit code."""
    if o["tty"] or o["interactive"]:
        raise click.UsageError(
            "a TTY and stdin are not supported (-t/--tty, -i/--interactive): run without them"
        )
    variables, placement = flags.env_entries(o["env"], o["env_file"])
    body: dict[str, Any] = {
        "Cmd": list(command),
        "AttachStdin": False,
        "AttachStdout": not o["detach"],
        "AttachStderr": not o["detach"],
        "Tty": False,
    }
    if variables or placement:
        body["Env"] = variables + placement
    if o["user"]:
        body["User"] = o["user"]
    if o["workdir"]:
        body["WorkingDir"] = o["workdir"]
    client = app.client
    found = locate(client, ref)
    node = found.node.id
    exec_id = str(client.engine(node, "POST", f"/containers/{found.id}/exec", body=body)["Id"])
    if o["detach"]:
        client.engine(node, "POST", f"/exec/{exec_id}/start", body={"Detach": True, "Tty": False})
        return
    out, err = _output()
    with client.engine_stream(
        node, "POST", f"/exec/{exec_id}/start", body={"Detach": False, "Tty": False}
    ) as resp:
        copy_output(resp.chunks(), out, err, multiplexed=resp.content_type != RAW_STREAM)
    _exit(_exec_exit_code(client, node, exec_id))


def _exec_exit_code(client: Client, node: str, exec_id: str, timeout: float = 10.0) -> int:
    """The exit code of a finished exec (the engine may record it a moment after the output ends)."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.engine(node, "GET", f"/exec/{exec_id}/json") or {}
        code = info.get("ExitCode")
        if code is not None and not info.get("Running"):
            return int(code)
        if time.monotonic() > deadline:
            raise SwarmctlError(f"exec {exec_id[:12]}: no exit code after its output ended")
        time.sleep(0.05)


# --- start / stop / restart / rm ---------------------------------------------------------------------------
def _act(
    app: AppContext, refs: Sequence[str], method: str, action: str, query: dict[str, Any] | None
) -> None:
    client = app.client

    def one(ref: str) -> None:
        found = locate(client, ref)
        path = f"/containers/{found.id}{action}"
        client.engine(found.node.id, method, path, query=query)

    remove_each(refs, one)


@container.command()
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_app
def start(app: AppContext, refs: tuple[str, ...]) -> None:
    """Start one or more stopped containers."""
    _act(app, refs, "POST", "/start", None)


@container.command()
@click.option("-t", "--time", "seconds", type=int, default=None, help="Seconds to wait before killing it.")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_app
def stop(app: AppContext, refs: tuple[str, ...], seconds: int | None) -> None:
    """Stop one or more running containers."""
    _act(app, refs, "POST", "/stop", {"t": seconds})


@container.command()
@click.option("-t", "--time", "seconds", type=int, default=None, help="Seconds to wait before killing it.")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_app
def restart(app: AppContext, refs: tuple[str, ...], seconds: int | None) -> None:
    """Restart one or more containers."""
    _act(app, refs, "POST", "/restart", {"t": seconds})


@container.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force the removal of a running container.")
@click.option("-v", "--volumes", is_flag=True, help="Remove anonymous volumes of the container.")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_app
def rm(app: AppContext, refs: tuple[str, ...], force: bool, volumes: bool) -> None:
    """Remove one or more containers."""
    query = {"force": "1" if force else None, "v": "1" if volumes else None}
    _act(app, refs, "DELETE", "", query)


# --- inspect / top / port ----------------------------------------------------------------------------------
@container.command()
@format_option
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_app
def inspect(app: AppContext, refs: tuple[str, ...], fmt: str | None) -> None:
    """Display detailed information on one or more containers."""
    found, errors = [], []
    for ref in refs:
        try:
            found.append(app.client.container(ref))
        except SwarmctlError as e:
            errors.append(str(e))
    if found:
        print_objects(found, fmt=fmt)
    if errors:
        raise SwarmctlError("; ".join(errors))


@container.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("ref", metavar="CONTAINER")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED, metavar="[ps OPTIONS]")
@pass_app
def top(app: AppContext, ref: str, ps_args: tuple[str, ...]) -> None:
    """Display the running processes of a container."""
    client = app.client
    found = locate(client, ref)
    query = {"ps_args": " ".join(ps_args)} if ps_args else None
    reply = client.engine(found.node.id, "GET", f"/containers/{found.id}/top", query=query) or {}
    titles = [str(t) for t in reply.get("Titles") or ()]
    rows = [[str(cell) for cell in p] for p in reply.get("Processes") or ()]
    click.echo(render_table(titles, [r + [""] * (len(titles) - len(r)) for r in rows]))


def port_lines(data: dict[str, Any], node: EngineNode, wanted: str = "") -> list[str]:
    """``80/tcp -> 10.0.0.2:8080`` for each published port of an inspect body (only the host addresses of
    ``wanted``, ``80`` or ``80/udp``, when given)."""
    ports = (data.get("NetworkSettings") or {}).get("Ports") or {}
    if wanted and "/" not in wanted:
        wanted += "/tcp"
    lines: list[str] = []
    for key in sorted(ports, key=lambda k: (int(k.partition("/")[0] or 0), k)):
        if wanted and key != wanted:
            continue
        for binding in ports[key] or ():
            ip = str(binding.get("HostIp") or "")
            if ip in ("", "0.0.0.0", "::") and node.host:
                ip = node.host
            address = f"[{ip}]:{binding.get('HostPort')}" if ":" in ip else f"{ip}:{binding.get('HostPort')}"
            line = address if wanted else f"{key} -> {address}"
            if line not in lines:
                lines.append(line)
    return lines


@container.command()
@click.argument("ref", metavar="CONTAINER")
@click.argument("private", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
@pass_app
def port(app: AppContext, ref: str, private: str | None) -> None:
    """List the port mappings of a container, or the addresses of one of its ports."""
    found = locate(app.client, ref)
    lines = port_lines(found.data, found.node, private or "")
    if private and not lines:
        raise SwarmctlError(f"no public port {private!r} published for {found.name or ref}")
    for line in lines:
        click.echo(line)
