"""``swarmctl image …``: the images on the cluster's nodes (classic Swarm).

``ls`` lists every connected node's images (``GET /images/json`` of the manager) with their node. ``pull``
and ``load`` go to every ready node unless ``--node`` names one, each node's progress shown live;
``push``, ``save``, ``tag`` and ``rm`` act on the nodes that have the image. Each node is reached through
the manager (``/nodes/{id}/engine/…``).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import click

from agent.runtime.errors import InvalidReference
from agent.runtime.images.reference import Reference, parse_reference
from swarmctl.commands.engine import EngineNode, check_jobs, created_at, resolve_node, run_jobs, target_nodes
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import InvalidValue, SwarmctlError
from swarmctl.output import format_option, no_trunc_option, print_rows, quiet_option
from swarmctl.streams import Job, JobsDisplay, human_size
from swarmctl.units import since

IMAGE_COLUMNS = [
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("ID", "IMAGE ID"),
    ("CreatedSince", "CREATED"),
    ("Size", "SIZE"),
    ("Node", "NODE"),
]
F = TypeVar("F", bound=Callable[..., Any])
_HEX = re.compile(r"^[0-9a-f]{4,64}$")
NONE = "<none>"


@click.group()
def image() -> None:
    """Manage images on the cluster's nodes."""


def node_option(help: str) -> Callable[[F], F]:
    return click.option("--node", default="", metavar="NODE", help=help)


def reference(text: str) -> Reference:
    """A Docker image reference, normalised (``busybox`` → ``docker.io/library/busybox:latest``)."""
    try:
        return parse_reference(text)
    except InvalidReference as e:
        raise InvalidValue("image reference", text, e.reason) from None


def _familiar(text: str) -> str:
    try:
        return parse_reference(text).familiar
    except InvalidReference:
        return text


def _path(name: str) -> str:
    return quote(name, safe="/:@")


# --- matching images to names ----------------------------------------------------------------------------
def image_matches(img: dict[str, Any], ref: str) -> bool:
    """Whether ``img`` (a summary) is ``ref``: by tag or digest (``busybox`` is ``busybox:latest``), or
    by its id or an id prefix."""
    wanted = _familiar(ref)
    names = [*(img.get("RepoTags") or ()), *(img.get("RepoDigests") or ())]
    if any(_familiar(str(n)) == wanted for n in names):
        return True
    ident = str(img.get("Id") or "").removeprefix("sha256:")
    short = ref.removeprefix("sha256:")
    return bool(_HEX.match(short)) and ident.startswith(short)


def nodes_with(images: Iterable[dict[str, Any]], ref: str) -> list[EngineNode]:
    """The nodes that have ``ref``, by name."""
    found = {}
    for img in images:
        if image_matches(img, ref):
            node = EngineNode.from_json(img.get("Node"))
            found[node.id] = node
    return sorted(found.values(), key=lambda n: (n.name, n.id))


# --- ls ------------------------------------------------------------------------------------------------
def split_tag(text: str) -> tuple[str, str]:
    """``host:5000/app:v1`` → (``host:5000/app``, ``v1``)."""
    colon = text.rfind(":")
    if colon > text.rfind("/"):
        return text[:colon], text[colon + 1 :]
    return text, NONE


def image_rows(
    images: Sequence[dict[str, Any]], no_trunc: bool = False, now: datetime | None = None
) -> list[dict[str, str]]:
    """``image ls`` rows, newest first: one per tag of each image on each node (``<none>`` if untagged)."""
    rows = []
    for img in sorted(images, key=lambda i: int(i.get("Created") or 0), reverse=True):
        node = EngineNode.from_json(img.get("Node"))
        tags = [str(t) for t in img.get("RepoTags") or () if t and t != "<none>:<none>"]
        digests = [str(d) for d in img.get("RepoDigests") or () if d and not d.startswith("<none>")]
        pairs = [split_tag(t) for t in tags]
        if not pairs:
            pairs = [(digests[0].partition("@")[0] if digests else NONE, NONE)]
        ident = str(img.get("Id") or "")
        created = datetime.fromtimestamp(int(img.get("Created") or 0), UTC)
        for repo, tag in pairs:
            digest = next((d.partition("@")[2] for d in digests if d.partition("@")[0] == repo), NONE)
            rows.append(
                {
                    "Repository": repo,
                    "Tag": tag,
                    "Digest": digest,
                    "ID": ident if no_trunc else ident.removeprefix("sha256:")[:12],
                    "CreatedSince": since(created, now) if created.year > 1970 else "N/A",
                    "CreatedAt": created_at(created),
                    "Size": human_size(int(img.get("Size") or 0)),
                    "Node": node.name,
                }
            )
    return rows


@image.command("ls")
@node_option("Only the images of this node.")
@format_option
@quiet_option
@no_trunc_option
@click.argument("repository", required=False, metavar="[REPOSITORY[:TAG]]")
@pass_app
def ls(
    app: AppContext, node: str, fmt: str | None, quiet: bool, no_trunc: bool, repository: str | None
) -> None:
    """List the images of every node (or of one)."""
    client = app.client
    if node:
        n = resolve_node(client, node)
        where = {"ID": n.id, "Name": n.name, "Addr": n.addr}
        images = [{**img, "Node": where} for img in client.engine(n.id, "GET", "/images/json") or ()]
    else:
        images = client.images()
    rows = image_rows(images, no_trunc)
    if repository:
        repo, tag = split_tag(repository)
        repo = _familiar(repo).rpartition(":")[0] or repo
        rows = [r for r in rows if r["Repository"] == repo and (tag == NONE or r["Tag"] == tag)]
    if quiet:
        for ident in dict.fromkeys(r["ID"] for r in rows):
            click.echo(ident)
        return
    print_rows(rows, IMAGE_COLUMNS, fmt=fmt)


# --- pull / push / load ------------------------------------------------------------------------------------
def _report_jobs(jobs: Sequence[Job], all_messages: bool = False) -> None:
    """One line per node on stdout saying how its job ended (every message with ``all_messages``); the
    failures are the error's to tell, and skipped nodes only matter next to nodes that did it."""
    some_done = any(j.state == "done" for j in jobs)
    for job in jobs:
        if job.state == "failed" or (job.state == "skipped" and not some_done):
            continue
        if all_messages and job.state == "done" and job.messages:
            for message in job.messages:
                click.echo(f"{job.node}: {message}")
        else:
            click.echo(f"{job.node}: {job.result()}")


@image.command()
@node_option("Pull on this node only (default: every ready node).")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output.")
@click.argument("name", metavar="NAME[:TAG|@DIGEST]")
@pass_app
def pull(app: AppContext, name: str, node: str, quiet: bool) -> None:
    """Pull an image from a registry onto the nodes."""
    ref = reference(name)
    query = {"fromImage": ref.familiar_name, "tag": ref.digest or ref.tag}
    client = app.client
    nodes = target_nodes(client, node)

    def work(n: EngineNode, report: Any) -> None:
        with client.engine_stream(n.id, "POST", "/images/create", query=query) as resp:
            for obj in resp.json_lines():
                report(obj)

    jobs = run_jobs(nodes, work, JobsDisplay(quiet=quiet), skip_unsupported=not node)
    if quiet:
        if any(j.state == "done" for j in jobs) and not any(j.state == "failed" for j in jobs):
            click.echo(str(ref))
    else:
        _report_jobs(jobs)
    check_jobs(jobs, f"pull of {name}")


@image.command()
@node_option("Push from this node (default: a node that has the image).")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output.")
@click.argument("name", metavar="NAME[:TAG]")
@pass_app
def push(app: AppContext, name: str, node: str, quiet: bool) -> None:
    """Push an image from a node to its registry."""
    ref = reference(name)
    client = app.client
    if node:
        source = resolve_node(client, node)
    else:
        holders = nodes_with(client.images(), name)
        if not holders:
            raise SwarmctlError(f"no node has an image tagged {ref.familiar}")
        source = holders[0]
    query = {"tag": ref.tag or None}

    def work(n: EngineNode, report: Any) -> None:
        with client.engine_stream(
            n.id, "POST", f"/images/{_path(ref.familiar_name)}/push", query=query
        ) as resp:
            for obj in resp.json_lines():
                report(obj)

    jobs = run_jobs([source], work, JobsDisplay(quiet=quiet))
    check_jobs(jobs, f"push of {name}")
    if quiet:
        click.echo(str(ref))
    else:
        _report_jobs(jobs)


@contextmanager
def _archive(path: str | None) -> Iterator[str]:
    """The archive's path: the file given, or standard input saved to a temporary file (each node reads
    it again)."""
    if path:
        yield path
        return
    if sys.stdin is None or sys.stdin.isatty():
        raise click.UsageError("requested load from stdin, but stdin is a terminal: use -i FILE or a pipe")
    with tempfile.NamedTemporaryFile(prefix="swarmctl-load-", suffix=".tar") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.flush()
        yield spool.name


@image.command()
@click.option(
    "-i",
    "--input",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="Tar archive (default: stdin).",
)
@node_option("Load on this node only (default: every ready node).")
@click.option("-q", "--quiet", is_flag=True, help="Suppress the progress output.")
@pass_app
def load(app: AppContext, path: str | None, node: str, quiet: bool) -> None:
    """Load images from a docker-save or OCI tar archive onto the nodes."""
    client = app.client
    nodes = target_nodes(client, node)
    with _archive(path) as archive:

        def work(n: EngineNode, report: Any) -> None:
            headers = {"Content-Type": "application/x-tar"}
            with (
                open(archive, "rb") as f,
                client.engine_stream(n.id, "POST", "/images/load", data=f, headers=headers) as resp,
            ):
                for obj in resp.json_lines():
                    report(obj)

        display = JobsDisplay(quiet=quiet, plain=False)  # its lines are its result, printed below
        jobs = run_jobs(nodes, work, display, skip_unsupported=not node)
    _report_jobs(jobs, all_messages=True)
    check_jobs(jobs, "load")


@image.command()
@click.option("-o", "--output", "path", default="", help="Write to this file (default: stdout).")
@node_option("Save from this node (default: a node that has every image).")
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@pass_app
def save(app: AppContext, names: tuple[str, ...], path: str, node: str) -> None:
    """Save one or more images of a node to a tar archive (docker save's)."""
    if not path and sys.stdout.isatty():
        raise click.UsageError("refusing to write an archive to a terminal: use -o FILE or a pipe")
    client = app.client
    if node:
        source = resolve_node(client, node)
    else:
        images = client.images()
        holders = [{n.id: n for n in nodes_with(images, name)} for name in names]
        common = [n for n in holders[0].values() if all(n.id in h for h in holders[1:])]
        if not common:
            raise SwarmctlError(f"no node has every image of: {' '.join(names)}")
        source = common[0]
    query = {"names": list(names)}
    with client.engine_stream(source.id, "GET", "/images/get", query=query) as resp:
        if path:
            with open(path, "wb") as f:
                for chunk in resp.chunks():
                    f.write(chunk)
        else:
            sys.stdout.flush()
            for chunk in resp.chunks():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()


# --- tag / rm ------------------------------------------------------------------------------------------
@image.command()
@node_option("Tag on this node only (default: every node that has SOURCE).")
@click.argument("source", metavar="SOURCE_IMAGE[:TAG]")
@click.argument("target", metavar="TARGET_IMAGE[:TAG]")
@pass_app
def tag(app: AppContext, source: str, target: str, node: str) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    new = reference(target)
    if new.digest:
        raise InvalidValue("target", target, "a tag cannot be a digest reference")
    client = app.client
    nodes = [resolve_node(client, node)] if node else nodes_with(client.images(), source)
    if not nodes:
        raise SwarmctlError(f"No such image: {source}")
    query = {"repo": new.familiar_name, "tag": new.tag}
    errors = []
    for n in nodes:
        try:
            client.engine(n.id, "POST", f"/images/{_path(source)}/tag", query=query)
        except SwarmctlError as e:
            errors.append(f"{n.name}: {e}")
    if errors:
        raise SwarmctlError("; ".join(errors))


@image.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force removal of the image.")
@click.option("--no-prune", is_flag=True, help="Do not delete untagged parents.")
@node_option("Remove from this node only (default: every node that has it).")
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@pass_app
def rm(app: AppContext, names: tuple[str, ...], force: bool, no_prune: bool, node: str) -> None:
    """Remove one or more images from the nodes."""
    client = app.client
    only = resolve_node(client, node) if node else None
    images = [] if only else client.images()
    query = {"force": "1" if force else None, "noprune": "1" if no_prune else None}
    errors = []
    for name in names:
        nodes = [only] if only else nodes_with(images, name)
        if not nodes:
            errors.append(f"No such image: {name}")
            continue
        for n in nodes:
            try:
                reply = client.engine(n.id, "DELETE", f"/images/{_path(name)}", query=query)
            except SwarmctlError as e:
                errors.append(f"{n.name}: {e}")
                continue
            for item in reply or ():
                for key, value in item.items():
                    click.echo(f"{n.name}: {key}: {value}")
    if errors:
        raise SwarmctlError("; ".join(errors))
