"""The manager's API fuzzed from its own OpenAPI document with schemathesis, on a real etcd.

One whole manager (store, API, dispatcher, election and the leader's loops) runs in a thread of its own and
serves its unix socket; schemathesis generates requests for every operation of ``/openapi.json`` — valid
ones and, where the schema allows it, invalid ones — and sends them through a ``requests`` session that
speaks HTTP over that socket. Path references point half of the time at objects that exist (a service, a
network, a secret, a volume, a node), updates carry the object's current version half of the time, and
half of the specs get a valid name (and a service an image), so the handlers behind a successful lookup and
the leader behind a successful write are reached too, not only the 404s and 400s. Log requests are never
followed (a followed stream ends only with its tasks) and replica counts stay small.

What must hold: no answer is a 5xx (but for the 503 of an engine call to a node with no agent, since the
fuzzed nodes exist only in the store), every request is answered (a stalled event loop is a crash), nothing is
logged at ERROR, and afterwards the state is consistent: every value in the store decodes, the manager's
cache holds exactly what the store holds, the leader still leads and converges every service (one live task
per slot, as many slots as replicas).

``SHOAL_FUZZ_EXAMPLES`` sets how many requests to send (default 1,500, about half a minute; the issue's
run is ``SHOAL_FUZZ_EXAMPLES=5000``, about a minute and a half).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from api import OBJECT_KINDS, Cluster, Node, Secret, Service, Task, TaskState, decode_msgpack
from api.objects import SECOND, Meta, NodeDescription, NodeState, NodeStatus, ServiceMode
from manager.ca import write_private
from manager.daemon import Manager, ManagerConfig
from manager.pki import CLUSTER_ID
from manager.secretbox import SecretBox
from tests.servers import EtcdServer, unique_prefix

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

T = TypeVar("T")

#: Requests to send in all.
EXAMPLES = int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "1500"))
#: Longest a request may take before the manager counts as stalled.
REQUEST_TIMEOUT = 20.0
#: Generated replica counts are kept this small: thousands of creates must stay cheap. The upper bound
#: itself (manager.validate.MAX_REPLICAS) is checked by tests/unit/manager/test_api.py.
FUZZ_MAX_REPLICAS = 8
#: Never fuzzed: the event stream never ends by itself (tests/unit/manager/test_api.py covers it).
SKIP = {"GET /events"}
BASE = "http://manager"


# --- HTTP over the manager's unix socket ------------------------------------------------------------------
class _UnixConnection(HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", maxsize=4)
        self.unix_path = path

    def _new_conn(self) -> HTTPConnection:
        return _UnixConnection(self.unix_path, REQUEST_TIMEOUT)


class UnixAdapter(HTTPAdapter):
    """A ``requests`` adapter that sends every request to one unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.pool = _UnixPool(path)

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> HTTPConnectionPool:
        return self.pool

    def close(self) -> None:
        self.pool.close()
        super().close()


# --- a manager in a thread --------------------------------------------------------------------------------
class ManagerThread:
    """A :class:`Manager` running on an event loop in a thread of its own (the fuzzer is synchronous)."""

    def __init__(self, config: ManagerConfig) -> None:
        self.manager = Manager(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-manager", daemon=True)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the manager's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self.manager.start())

    def stop(self) -> None:
        try:
            self.run(self.manager.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class ErrorLog(logging.Handler):
    """Keeps every record at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def fuzzed(tmp_path: Path, etcd_server: EtcdServer) -> Iterator[ManagerThread]:
    key = os.urandom(32)
    state = tmp_path / "manager"
    write_private(state / "secrets.key", key)
    config = ManagerConfig(
        store_url=etcd_server.url_with_prefix(unique_prefix("fuzz")),
        listen="",
        socket=str(tmp_path / "manager.sock"),
        state_dir=str(state),
        election_ttl=2.0,
    )
    m = ManagerThread(config)
    m.start()
    try:
        m.run(_settle_cluster(m.manager))
        yield m
    finally:
        m.stop()


NODES = ("fuzz-node-1", "fuzz-node-2")


async def _settle_cluster(manager: Manager) -> None:
    """Lead, with a heartbeat long enough that the agentless nodes below stay READY throughout."""
    async with asyncio.timeout(20):
        await manager.leading.wait()
    store = manager.store
    assert store is not None
    cluster = store.must_get(Cluster, CLUSTER_ID)
    dispatcher = replace(cluster.spec.dispatcher, heartbeat_period_ns=600 * SECOND)
    await store.update(replace(cluster, spec=replace(cluster.spec, dispatcher=dispatcher)))


async def _ensure_nodes(manager: Manager) -> None:
    """Two READY nodes (without agents) for the scheduler and the node operations; again after a fuzzed
    ``DELETE /nodes/…?force=1`` removed one."""
    store = manager.store
    assert store is not None
    for name in NODES:
        if store.get(Node, name) is None:
            status = NodeStatus(state=NodeState.READY, description=NodeDescription(hostname=name))
            await store.create(Node(meta=Meta(id=name), status=status))


# --- generating requests ----------------------------------------------------------------------------------
SEED_OBJECTS: list[tuple[str, dict[str, Any]]] = [
    ("/networks/create", {"annotations": {"name": "fuzz-net"}, "driver": "overlay"}),
    ("/secrets/create", {"annotations": {"name": "fuzz-secret"}, "data": "c2VjcmV0"}),
    ("/volumes/create", {"annotations": {"name": "fuzz-volume"}}),
    (
        "/services/create",
        {
            "annotations": {"name": "fuzz-web"},
            "replicas": 2,
            "task": {"container": {"image": "busybox"}, "networks": [{"target": "fuzz-net"}]},
        },
    ),
]
#: An object that exists, by the first part of an operation's path (tasks: one of fuzz-web's).
KNOWN_REFS = {
    "services": "fuzz-web",
    "networks": "fuzz-net",
    "secrets": "fuzz-secret",
    "volumes": "fuzz-volume",
    "nodes": NODES[0],
}


def _clamp_replicas(body: Any) -> Any:
    if isinstance(body, dict):
        replicas = body.get("replicas")
        if type(replicas) is int and replicas > FUZZ_MAX_REPLICAS:
            body["replicas"] = replicas % (FUZZ_MAX_REPLICAS + 1)
    return body


def _make_plausible(body: Any, name: str, service: bool) -> None:
    """Give a generated spec a valid name (and a service an image), leaving the rest as generated: most
    generated names are not names Docker allows, so without this nearly nothing would get created, and
    the leader would never see the odd specs that pass validation."""
    if not isinstance(body, dict):
        return
    annotations = body.setdefault("annotations", {})
    if isinstance(annotations, dict):
        annotations["name"] = name
    if not service:
        return
    task = body.setdefault("task", {})
    container = task.setdefault("container", {}) if isinstance(task, dict) else None
    if isinstance(container, dict) and not container.get("image"):
        container["image"] = "busybox"


class Fuzzer:
    """Sends generated requests and remembers what went wrong."""

    def __init__(self, session: requests.Session, manager: ManagerThread, limit: int) -> None:
        self.session = session
        self.manager = manager
        self.limit = limit
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.failures: dict[str, str] = {}
        #: operation → {"2xx": n, "4xx": n}
        self.by_operation: dict[str, dict[str, int]] = {}

    def reseed(self) -> None:
        """Make the known objects exist again."""
        self.manager.run(_ensure_nodes(self.manager.manager))
        for path, body in SEED_OBJECTS:
            r = self.session.post(BASE + path, json=body, timeout=REQUEST_TIMEOUT)
            assert r.status_code in (201, 409), (path, r.status_code, r.text)

    def _get(self, path: str) -> Any:
        r = self.session.get(BASE + path, timeout=REQUEST_TIMEOUT)
        return r.json() if r.status_code == 200 else None

    def _known_ref(self, kind: str) -> str | None:
        if kind == "tasks":
            tasks = self._get("/tasks?service=fuzz-web") or []
            return str(tasks[0]["meta"]["id"]) if tasks else None
        return KNOWN_REFS.get(kind)

    def send(self, case: Any, known: bool, fresh_version: bool, plausible: bool) -> None:
        path = case.operation.path
        kind = path.split("/")[1]
        ref = self._known_ref(kind) if known and "{ref}" in path else None
        if ref is not None:
            case.path_parameters["ref"] = ref
        case.body = _clamp_replicas(case.body)
        if plausible:
            # An update keeps the name (renaming is refused); a creation gets a fresh one.
            same = path == "/services/{ref}/update" and ref is not None
            _make_plausible(case.body, ref if same and ref else f"fuzz-{self.sent}", kind == "services")
        if isinstance(case.query, dict) and "follow" in case.query:
            # A followed log stream ends only with its tasks (as ``docker service logs -f``).
            case.query["follow"] = "false"
        if fresh_version and ref is not None and isinstance(case.query, dict) and "version" in case.query:
            current = self._get(f"/{kind}/{ref}")
            if current is not None:
                case.query["version"] = current["meta"]["version"]
        self.sent += 1
        label = case.operation.label
        try:
            response = case.call(base_url=BASE, session=self.session, timeout=REQUEST_TIMEOUT)
        except requests.RequestException as e:
            self.failures.setdefault(f"{label}: {type(e).__name__}", _describe(case, str(e)))
            return
        status = response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        per_op = self.by_operation.setdefault(label, {})
        per_op[f"{status // 100}xx"] = per_op.get(f"{status // 100}xx", 0) + 1
        if status >= 500 and not _expected_unavailable(label, status, response.text):
            self.failures.setdefault(f"{label}: {status} {response.text[:200]}", _describe(case, ""))

    def run(self, operation: Any, mode: Any, examples: int) -> None:
        """Up to ``examples`` requests for one operation in one generation mode."""

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            known=st.booleans(),
            fresh=st.booleans(),
            plausible=st.booleans(),
        )
        def fuzz(case: Any, known: bool, fresh: bool, plausible: bool) -> None:
            if self.sent < self.limit:
                self.send(case, known, fresh, plausible)

        with contextlib.suppress(Unsatisfiable):  # every input was a duplicate or could not be made
            fuzz()


def _expected_unavailable(label: str, status: int, text: str) -> bool:
    """The fuzzed nodes have no agents: engine calls and one-off containers are refused with 503 saying so."""
    engine = "/engine/" in label or label.endswith("/containers/create")
    return status == 503 and engine and ("is not connected" in text or "no suitable node" in text)


def _describe(case: Any, error: str) -> str:
    return (
        f"{case.method} {case.formatted_path} query={case.query!r} body={str(case.body)[:600]!r} {error}"
    ).strip()


# --- state afterwards -------------------------------------------------------------------------------------
async def _consistency_problems(manager: Manager) -> list[str]:
    """What is wrong with the state: undecodable values, a cache that differs from the store, services
    the leader does not converge."""
    store = manager.store
    assert store is not None and manager.kv is not None
    problems: list[str] = []
    if not manager.leading.is_set():
        problems.append("the manager no longer leads")
    box = SecretBox.from_file(Path(manager.config.state_dir) / "secrets.key")

    def converged() -> list[str]:
        out = []
        for svc in store.objects(Service):
            if svc.spec.mode is ServiceMode.GLOBAL:
                continue
            live: dict[int, list[Task]] = {}
            for t in store.tasks_of_service(svc.meta.id):
                if t.desired_state <= TaskState.RUNNING:
                    live.setdefault(t.slot, []).append(t)
            doubled = [slot for slot, ts in live.items() if len(ts) > 1]
            if doubled:
                out.append(f"service {svc.spec.annotations.name}: slots {doubled} have two live tasks")
            if len(live) != svc.spec.replicas:
                out.append(
                    f"service {svc.spec.annotations.name}: {len(live)} slots, {svc.spec.replicas} wanted"
                )
        return out

    deadline = time.monotonic() + 30
    while converged() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    problems += converged()

    # A quiet moment (no write for half a second), then the store and the cache side by side.
    revision = -1
    while revision != await manager.kv.revision() and time.monotonic() < deadline + 10:
        revision = await manager.kv.revision()
        await asyncio.sleep(0.5)
    await store.wait_for(revision)
    for kind, tp in OBJECT_KINDS.items():
        stored: dict[str, Any] = {}
        async for kv in manager.kv.iter_prefix(f"{kind}/"):
            try:
                obj: Any = decode_msgpack(tp, kv.value)
                if isinstance(obj, Secret):
                    obj = replace(obj, spec=replace(obj.spec, data=box.open(obj.meta.id, obj.spec.data)))
            except Exception as e:
                problems.append(f"{kv.key} does not decode: {e}")
                continue
            stored[obj.meta.id] = replace(obj, meta=replace(obj.meta, version=kv.mod_revision))
        objects: list[Any] = store.objects(tp)
        cached = {o.meta.id: o for o in objects}
        if set(stored) != set(cached):
            problems.append(f"{kind}: cache and store hold different ids: {set(stored) ^ set(cached)}")
        problems += [
            f"{kind}/{i}: the cache differs from the store"
            for i in stored
            if cached.get(i, stored[i]) != stored[i]
        ]
    return problems


def test_fuzzed_api_never_fails_and_leaves_a_consistent_state(fuzzed: ManagerThread) -> None:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    session = requests.Session()
    session.mount("http://", UnixAdapter(fuzzed.manager.config.socket))
    try:
        document = session.get(BASE + "/openapi.json", timeout=REQUEST_TIMEOUT).json()
        schema = schemathesis.openapi.from_dict(document)
        operations = [op.ok() for op in schema.get_all_operations()]
        operations = [op for op in operations if op.label not in SKIP]
        positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
        # Only a body or a typed query parameter can be made invalid (any path reference is a string).
        runs = [(op, positive) for op in operations]
        runs += [(op, negative) for op in operations if len(op.body) or len(op.query)]
        fuzzer = Fuzzer(session, fuzzed, EXAMPLES)
        per_run = max(10, EXAMPLES // len(runs))
        rounds = 0
        while fuzzer.sent < EXAMPLES and rounds < 20:
            rounds += 1
            fuzzer.reseed()
            for operation, mode in runs:
                fuzzer.run(operation, mode, per_run)
                if operation.method.upper() == "DELETE":
                    fuzzer.reseed()
        problems = fuzzed.run(_consistency_problems(fuzzed.manager))
    finally:
        logging.getLogger().removeHandler(errors)
        session.close()
    print(f"\n{fuzzer.sent} requests in {rounds} rounds; statuses {dict(sorted(fuzzer.statuses.items()))}")
    for label, counts in sorted(fuzzer.by_operation.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    assert fuzzer.sent >= EXAMPLES
    assert not fuzzer.failures, "\n".join(f"{k}\n    {v}" for k, v in fuzzer.failures.items())
    assert not [r.getMessage() for r in errors.records]
    assert not problems, "\n".join(problems)
