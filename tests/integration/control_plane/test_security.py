"""Cluster security end to end on real etcd: joining with tokens, mutual TLS, refusals, renewal, secrets.

Managers serve TLS with the cluster CA exactly as shoal-manager does; agents are real (simulated
executor). Every refusal is checked three ways: the caller is refused, the manager logged it, and nothing
was half-accepted (no Node object, so nothing can be assigned to it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import SessionRefused
from agent.identity import JoinRefused, default_renewal_time
from api import Node, Secret, Service, Task, TaskState
from api.join import MANAGER_SERVER_NAME, JoinToken
from api.objects import (
    SECOND,
    Annotations,
    CAConfig,
    ContainerSpec,
    NodeRole,
    SecretReference,
    SecretSpec,
    TaskSpec,
    TaskStatus,
)
from api.session import Error, Register, decode_frame, encode_frame
from manager.ca import ROLE_ADMIN, ROLE_MANAGER, ROLE_WORKER, RootCA, new_node_key, private_key_pem
from manager.pki import CA_KEY
from tests.integration.control_plane.conftest import ControlPlane, ManagerHarness, eventually
from tests.servers import unique_prefix


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """These tests run on the session's real etcd only (the store plays no part in what they check)."""
    etcd: Any = request.getfixturevalue("etcd_server")
    return str(etcd.url_with_prefix(unique_prefix(request.node.name)))


def tls_context(
    tmp: Path, name: str, ca: RootCA, cert: x509.Certificate | None, key: Any = None
) -> ssl.SSLContext:
    """A client context trusting ``ca`` and presenting ``cert`` (None: no client certificate)."""
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if cert is not None:
        path = tmp / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + private_key_pem(key))
        ctx.load_cert_chain(path)
    return ctx


def client_cert(ca: RootCA, subject: str, role: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_node_key()
    return ca.issue(subject, role, key.public_key()), key


def expired_cert(ca: RootCA, subject: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A worker certificate of this cluster's CA whose validity ended an hour ago."""
    assert ca.key is not None
    key = new_node_key()
    now = dt.datetime.now(dt.UTC)
    fresh = ca.issue(subject, ROLE_WORKER, key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(fresh.subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=3))
        .not_valid_after(now - dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


async def call(ctx: ssl.SSLContext, addr: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTPS request to a manager; (status, decoded JSON or text)."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"https://{addr}{path}", json=body, ssl=ctx, server_hostname=MANAGER_SERVER_NAME
        ) as r,
    ):
        text = await r.text()
        try:
            return r.status, await r.json(content_type=None)
        except ValueError:
            return r.status, text


def pki_of(m: ManagerHarness) -> Any:
    assert m.pki is not None
    return m.pki


async def no_nodes(plane: ControlPlane) -> list[Node]:
    await plane.store.wait_for(await plane.store.kv.revision())
    return plane.store.objects(Node)


async def test_a_rotated_token_admits_nobody_but_joined_agents_stay(plane: ControlPlane) -> None:
    old = plane.worker_token
    first = plane.agent("first")
    (node_id,) = await plane.connected(first)
    dispatcher = plane.managers[0].dispatcher
    assert dispatcher is not None
    session_id = dispatcher.sessions()[node_id]

    new = await pki_of(plane.managers[0]).rotate_token(NodeRole.WORKER)
    assert new != old and plane.worker_token == new
    assert JoinToken.parse(new).digest == JoinToken.parse(old).digest  # the CA did not change
    assert plane.manager_token != new

    late = plane.agent("late", token=old, start=False)
    with pytest.raises(JoinRefused, match="invalid join token") as refused:
        await asyncio.wait_for(late.run(), 10)
    assert refused.value.fatal
    assert [n.meta.id for n in await no_nodes(plane)] == [node_id]

    # The agent that joined before keeps its session (never dropped) and keeps working.
    task = await plane.assign(node_id)
    await plane.task_state(task.meta.id, TaskState.RUNNING)
    assert first.session.sessions == 1 and dispatcher.sessions()[node_id] == session_id

    (second,) = await plane.connected(plane.agent("second", token=new))
    assert second != node_id


async def test_tokens_pin_the_cluster_ca(plane: ControlPlane, caplog: pytest.LogCaptureFixture) -> None:
    # A token naming another CA: the agent refuses to hand its secret to this manager at all.
    other = RootCA.create("other")
    foreign = str(JoinToken(other.digest, JoinToken.parse(plane.worker_token).secret))
    agent = plane.agent("misled", token=foreign, start=False)
    with (
        caplog.at_level(logging.INFO, logger="manager.join"),
        pytest.raises(JoinRefused, match="does not hold the CA") as refused,
    ):
        await asyncio.wait_for(agent.run(), 10)
    assert refused.value.fatal
    assert "joined" not in caplog.text  # the token never reached the join endpoint
    bad = plane.agent("garbled", token="SWMTKN-1-nonsense", start=False)
    with pytest.raises(JoinRefused, match="invalid join token"):
        await asyncio.wait_for(bad.run(), 10)
    assert await no_nodes(plane) == []


async def test_the_manager_token_makes_manager_nodes_that_may_use_the_api(plane: ControlPlane) -> None:
    boss = plane.agent("boss", token=plane.manager_token)
    (node_id,) = await plane.connected(boss)
    assert boss.credentials.role == "manager"
    ctx = boss.credentials.context()
    status, nodes = await call(ctx, plane.managers[0].addr, "GET", "/nodes")
    assert status == 200 and [n["meta"]["id"] for n in nodes] == [node_id]


async def test_a_worker_certificate_may_not_call_the_managers_api(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    worker = plane.agent("worker")
    await plane.connected(worker)
    ctx = worker.credentials.context()
    addr = plane.managers[0].addr
    spec = {"annotations": {"name": "web"}, "task": {"container": {"image": "busybox"}}}
    with caplog.at_level(logging.WARNING, logger="manager.tls"):
        status, body = await call(ctx, addr, "POST", "/services/create", spec)
    assert status == 403, body
    assert "may not call POST /services/create" in body["message"]
    assert "refused POST /services/create" in caplog.text
    for method, path in [
        ("GET", "/swarm"),  # the join tokens
        ("GET", "/nodes"),
        ("POST", "/swarm/join-tokens/rotate?role=manager"),
        ("POST", "/client-certificate"),
    ]:
        assert (await call(ctx, addr, method, path))[0] == 403, path
    assert (await call(ctx, addr, "GET", "/_ping"))[0] == 200
    assert (await call(ctx, addr, "GET", "/ca"))[0] == 200
    await plane.store.wait_for(await plane.store.kv.revision())
    assert plane.store.find_by_name(Service, "web") is None


async def test_no_certificate_or_plain_http_gets_nothing(plane: ControlPlane) -> None:
    m = plane.managers[0]
    ctx = tls_context(plane.tmp, "none", pki_of(m).ca, None)
    status, body = await call(ctx, m.addr, "GET", "/services")
    assert status == 401 and "needs a client certificate" in body["message"]
    assert (await call(ctx, m.addr, "GET", "/ca"))[0] == 200
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://{m.addr}/services") as r:
                await r.read()


@pytest.mark.parametrize("kind", ["another cluster", "expired"])
async def test_foreign_and_expired_certificates_are_refused_and_logged(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    m = plane.managers[0]
    ours = pki_of(m).ca
    if kind == "another cluster":
        other = RootCA.create("other")
        cert, key = client_cert(other, "intruder", ROLE_MANAGER)
        # Its CA has the same name as ours (every cluster's is "swarm-ca"): the signature gives it away.
        expect = "certificate signature failure"
    else:
        cert, key = expired_cert(ours, "stale")
        expect = "certificate has expired"
    ctx = tls_context(plane.tmp, kind.replace(" ", "-"), ours, cert, key)
    with caplog.at_level(logging.WARNING, logger="manager.tls"):
        for path in ("/agent/session", "/nodes"):
            with pytest.raises(aiohttp.ClientError):
                await call(ctx, m.addr, "GET", path)
        await eventually(lambda: expect in caplog.text, timeout=5, what="the refusal in the manager's log")
    assert "refused a TLS connection" in caplog.text
    assert await no_nodes(plane) == []


async def test_an_administrators_certificate_uses_the_api_but_opens_no_session(plane: ControlPlane) -> None:
    m = plane.managers[0]
    ca = pki_of(m).ca
    cert, key = client_cert(ca, "admin-test", ROLE_ADMIN)
    ctx = tls_context(plane.tmp, "admin", ca, cert, key)
    assert (await call(ctx, m.addr, "GET", "/swarm"))[0] == 200
    status, body = await call(ctx, m.addr, "POST", "/swarm/join-tokens/rotate?role=worker")
    assert status == 200 and body["token"] == plane.worker_token
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"wss://{m.addr}/agent/session", ssl=ctx, server_hostname=MANAGER_SERVER_NAME) as ws,
    ):
        await ws.send_bytes(encode_frame(Register(hostname="admin")))
        answer = decode_frame((await ws.receive(timeout=5)).data)
    assert isinstance(answer, Error) and answer.fatal and answer.code == "unauthenticated"
    assert await no_nodes(plane) == []


async def test_a_removed_node_cannot_come_back_with_its_certificate(plane: ControlPlane) -> None:
    boss = plane.agent("boss", token=plane.manager_token)
    (node_id,) = await plane.connected(boss)
    ctx = boss.credentials.context()
    await boss.stop()
    await plane.store.delete(await eventually(lambda: plane.node(node_id), what="the node"))

    addr = plane.managers[0].addr
    status, body = await call(ctx, addr, "GET", "/nodes")
    assert status == 403 and "removed" in body["message"]
    key = (
        new_node_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    status, body = await call(ctx, addr, "POST", "/node/renew", {"public_key": key.decode()})
    assert status == 403 and "removed" in body["message"]

    again = plane.agent("boss", state_dir=boss.config.state_dir, token="")
    run = again.start()
    await asyncio.wait({run}, timeout=10)
    assert isinstance(run.exception(), SessionRefused) and "removed" in str(run.exception())
    assert await no_nodes(plane) == []


async def test_certificates_renew_before_expiry_without_dropping_the_session(plane: ControlPlane) -> None:
    cluster = plane.cluster
    hour = CAConfig(node_cert_expiry_ns=3600 * SECOND)
    await plane.store.update(replace(cluster, spec=replace(cluster.spec, ca_config=hour)))

    # Renewal would come after half an hour; the hook makes the first certificate due a second after it
    # is first looked at, and leaves later ones to the usual rule.
    due: dict[int, dt.datetime] = {}

    def renew_at(cert: x509.Certificate) -> dt.datetime:
        if not due:
            due[cert.serial_number] = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        return due.get(cert.serial_number) or default_renewal_time(cert)

    agent = plane.agent("renewer", start=False)
    agent.config.renew_at = renew_at
    agent.start()
    (node_id,) = await plane.connected(agent)
    first = agent.credentials.certificate
    assert first is not None
    lifetime = first.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=55) < lifetime <= dt.timedelta(hours=1)
    dispatcher = plane.managers[0].dispatcher
    assert dispatcher is not None
    session_id = dispatcher.sessions()[node_id]

    renewed = await eventually(
        lambda: (
            (c := agent.credentials.certificate) is not None and c.serial_number != first.serial_number and c
        ),
        timeout=10,
        what="the certificate to be renewed",
    )
    assert renewed.public_key() != first.public_key(), "a new key with every certificate"
    assert agent.credentials.node_id == node_id
    assert dt.timedelta(minutes=55) < renewed.not_valid_after_utc - dt.datetime.now(dt.UTC)
    # The session was never dropped: same connection, same session on the manager, still working.
    assert agent.session.sessions == 1 and dispatcher.sessions()[node_id] == session_id
    task = await plane.assign(node_id)
    await plane.task_state(task.meta.id, TaskState.RUNNING)

    # And the renewed certificate on disk is what the node connects with from now on.
    await agent.stop()
    again = plane.agent("renewer", state_dir=agent.config.state_dir, token="")
    assert await plane.connected(again) == [node_id]


async def test_secrets_go_only_to_nodes_running_tasks_that_use_them(plane: ControlPlane) -> None:
    a, b = plane.agent("a"), plane.agent("b")
    node_a, _ = await plane.connected(a, b)
    secret = await plane.store.create(
        Secret(spec=SecretSpec(annotations=Annotations(name="db-password"), data=b"hunter2"))
    )
    stored = await plane.store.kv.get(f"secrets/{secret.meta.id}")
    assert stored is not None and b"hunter2" not in stored.value, "sealed at rest"
    assert (await plane.store.kv.get(CA_KEY)) is not None
    ref = SecretReference(secret_id=secret.meta.id, secret_name="db-password", target="password")
    task = await plane.store.create(
        Task(
            service_id="svc",
            slot=1,
            node_id=node_a,
            spec=TaskSpec(container=ContainerSpec(image="busybox", secrets=(ref,))),
            status=TaskStatus(state=TaskState.ASSIGNED),
        )
    )
    await plane.task_state(task.meta.id, TaskState.RUNNING)
    assert a.worker.secrets[secret.meta.id].spec.data == b"hunter2"
    assert a.worker.dependencies(task).secrets[secret.meta.id].spec.data == b"hunter2"
    assert b.worker.secrets == {}
    assert "hunter2" not in repr(a.worker.secrets)

    # Once no task of the node uses it, the agent forgets it.
    await plane.store.delete(await plane.store.fetch(Task, task.meta.id))
    await eventually(lambda: task.meta.id not in a.worker.controllers, timeout=5, what="the task gone")
    later = await plane.assign(node_a)
    await plane.task_state(later.meta.id, TaskState.RUNNING)
    assert secret.meta.id not in a.worker.secrets
