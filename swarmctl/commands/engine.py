"""What the container and image commands share: the nodes they address, and jobs run on several at once.

Containers and images live on the nodes' engines (classic Swarm): the manager lists them over every
connected node and passes ``/nodes/{id}/engine/…`` through to one node's Docker Engine API. A node is named
on the command line by hostname, id or id prefix (``--node``), and is known in API answers by the
``Node`` object the manager adds (``{"ID", "Name", "Addr"}``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api import Node
from api.objects import NodeState
from swarmctl.client import Client
from swarmctl.errors import APIError, SwarmctlError
from swarmctl.streams import Job, JobsDisplay

#: The status a node's engine answers when the node runs no containers (a simulated node).
NOT_IMPLEMENTED = 501


@dataclass(frozen=True)
class EngineNode:
    """A node as the container and image commands show it."""

    id: str
    name: str
    addr: str = ""

    @classmethod
    def from_node(cls, node: Node) -> EngineNode:
        return cls(node.meta.id, node.status.description.hostname or node.meta.id[:12], node.status.addr)

    @classmethod
    def from_json(cls, obj: Any) -> EngineNode:
        """The ``Node`` object the manager adds to containers and images."""
        data = obj if isinstance(obj, dict) else {}
        node_id = str(data.get("ID") or "")
        return cls(node_id, str(data.get("Name") or node_id[:12]), str(data.get("Addr") or ""))

    @property
    def host(self) -> str:
        """The node's address without a port, for showing where published ports answer."""
        addr = self.addr
        if addr.startswith("["):
            return addr[1:].partition("]")[0]
        if addr.count(":") == 1:
            return addr.partition(":")[0]
        return addr


def resolve_node(client: Client, ref: str) -> EngineNode:
    """The node named ``ref``: its id, its hostname, or an unambiguous id prefix."""
    nodes = client.nodes()
    for n in nodes:
        if n.meta.id == ref:
            return EngineNode.from_node(n)
    named = [n for n in nodes if n.status.description.hostname == ref]
    if len(named) == 1:
        return EngineNode.from_node(named[0])
    if len(named) > 1:
        raise SwarmctlError(f"node name {ref!r} is ambiguous: {len(named)} nodes have it (use the node id)")
    prefixed = [n for n in nodes if n.meta.id.startswith(ref)]
    if len(prefixed) == 1:
        return EngineNode.from_node(prefixed[0])
    if len(prefixed) > 1:
        raise SwarmctlError(f"node id prefix {ref!r} is ambiguous")
    raise SwarmctlError(f"no such node: {ref}")


def ready_nodes(client: Client) -> list[EngineNode]:
    """Every node whose agent is connected, by name."""
    nodes = [EngineNode.from_node(n) for n in client.nodes() if n.status.state is NodeState.READY]
    return sorted(nodes, key=lambda n: (n.name, n.id))


def target_nodes(client: Client, node: str | None) -> list[EngineNode]:
    """The node given with ``--node``, or every ready node."""
    if node:
        return [resolve_node(client, node)]
    nodes = ready_nodes(client)
    if not nodes:
        raise SwarmctlError("no node is ready")
    return nodes


def created_at(when: datetime) -> str:
    """A time as Go's ``Time.String()`` prints it in local time (Docker's ``CreatedAt`` fields)."""
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %z %Z")


#: A job on one node: given the node and a callback taking each JSON line of its progress.
Work = Callable[[EngineNode, Callable[[Any], None]], None]
_END = object()


def run_jobs(
    nodes: Sequence[EngineNode], work: Work, display: JobsDisplay, *, skip_unsupported: bool = False
) -> list[Job]:
    """Run ``work`` on every node at once (a thread each, each on its own connection) and show their
    progress; the jobs as they ended. With ``skip_unsupported``, a node that runs no containers (501) is
    skipped rather than failed."""
    events: queue.Queue[tuple[int, Any]] = queue.Queue()
    jobs = [Job(n.name) for n in nodes]

    def run(i: int, node: EngineNode) -> None:
        try:
            work(node, lambda obj: events.put((i, obj)))
        except SwarmctlError as e:
            events.put((i, e))
        except Exception as e:  # a thread's surprise ends its job, not the others
            events.put((i, SwarmctlError(f"{type(e).__name__}: {e}")))
        finally:
            events.put((i, _END))

    threads = [
        threading.Thread(target=run, args=(i, n), name=f"job-{n.name}", daemon=True)
        for i, n in enumerate(nodes)
    ]
    with display:
        display.show(jobs)
        for t in threads:
            t.start()
        running = len(threads)
        while running:
            try:
                i, item = events.get(timeout=0.2)
            except queue.Empty:
                continue
            job = jobs[i]
            lines: list[str] = []
            if item is _END:
                running -= 1
                job.finish()
            elif isinstance(item, APIError) and skip_unsupported and item.status == NOT_IMPLEMENTED:
                job.skip(item.message)
                lines = [f"skipped: {job.error}"]
            elif isinstance(item, SwarmctlError):
                job.fail(str(item))  # said once, by check_jobs, with the other nodes' failures
            else:
                lines = job.feed(item)
            display.show(jobs, job, lines)
    return jobs


def check_jobs(jobs: Sequence[Job], what: str) -> None:
    """Raise one error naming every node whose job failed, or saying that every node skipped it."""
    failed: dict[str, list[str]] = {}
    for j in jobs:
        if j.state == "failed":
            failed.setdefault(j.error, []).append(j.node)
    if failed:
        raise SwarmctlError(
            "; ".join(f"{what} failed on {', '.join(nodes)}: {error}" for error, nodes in failed.items())
        )
    if jobs and all(j.state == "skipped" for j in jobs):
        raise SwarmctlError(f"{what}: no ready node runs containers ({jobs[0].node}: {jobs[0].error})")
