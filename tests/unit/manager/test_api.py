"""The manager's HTTP API over an in-memory store: status codes, messages, conditional updates, events."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import Secret, to_plain
from api.objects import (
    Annotations,
    ContainerSpec,
    Placement,
    ServiceSpec,
    TaskSpec,
    UpdateState,
)
from kvstore_adapters.memory import MemoryStore
from manager import join
from manager.api.app import STORE, make_app
from manager.api.openapi import OPERATIONS, document
from manager.pki import ClusterPKI
from manager.secretbox import SecretBox
from manager.store import ObjectStore


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    kv = MemoryStore()
    await kv.connect()
    store = ObjectStore(kv, SecretBox(os.urandom(32)))
    await store.start()
    app = make_app(store)
    # The membership endpoints too (no authorizer here: that is tests/integration/control_plane).
    join.mount(app, await ClusterPKI.setup(store, tmp_path, "m1"))
    async with TestClient(TestServer(app)) as c:
        yield c
    await store.stop()
    await kv.close()


def spec(name: str = "web", image: str = "busybox", **placement: Any) -> dict[str, Any]:
    s = ServiceSpec(
        annotations=Annotations(name=name),
        replicas=2,
        task=TaskSpec(container=ContainerSpec(image=image), placement=Placement(**placement)),
    )
    return to_plain(s)  # type: ignore[no-any-return]


async def test_service_create_inspect_list(client: TestClient[Any, Any]) -> None:
    r = await client.post("/services/create", json=spec())
    assert r.status == 201
    sid = (await r.json())["id"]
    by_name = await (await client.get("/services/web")).json()
    assert by_name["meta"]["id"] == sid and by_name["spec"]["replicas"] == 2
    by_prefix = await client.get(f"/services/{sid[:6]}")
    assert by_prefix.status == 200
    listed = await (await client.get("/services")).json()
    assert [s["spec"]["annotations"]["name"] for s in listed] == ["web"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("{not json", 400, "not valid JSON"),
        ({"annotations": {"name": "x"}, "replcas": 2}, 400, "replcas: unknown field for ServiceSpec"),
        ({"annotations": {"name": "x"}, "replicas": "2"}, 400, "replicas: expected an integer"),
        (spec(image=""), 400, "a service needs an image"),
        (spec(name="bad name!"), 400, "service name 'bad name!' is invalid"),
        (spec(constraints=("node.labels.zone=eu",)), 400, "node.labels.zone=eu"),
        ({**spec(), "replicas": -1}, 400, "replicas cannot be negative"),
        ({**spec(), "replicas": 2**62}, 400, "at most 100,000 replicas per service"),
        ({**spec(), "update_config": {"delay_ns": 2**70}}, 400, "Integer value out of range"),
    ],
)
async def test_bad_service_specs_get_one_clear_message(
    client: TestClient[Any, Any], body: Any, status: int, words: str
) -> None:
    if isinstance(body, str):
        r = await client.post("/services/create", data=body, headers={"Content-Type": "application/json"})
    else:
        r = await client.post("/services/create", json=body)
    assert r.status == status
    message = (await r.json())["message"]
    assert words in message and "\n" not in message
    assert await (await client.get("/services")).json() == []  # nothing half-created


async def test_duplicate_names_and_unknown_refs(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/services/create", json=spec())).status == 201
    r = await client.post("/services/create", json=spec())
    assert r.status == 409 and (await r.json())["message"] == "service web already exists"
    r = await client.get("/services/nope")
    assert r.status == 404 and (await r.json())["message"] == "service nope not found"
    r = await client.get("/tasks/nope")  # tasks have no names: not found, rather than a crash
    assert r.status == 404 and (await r.json())["message"] == "task nope not found"


async def test_update_is_conditional_and_starts_a_rolling_update(client: TestClient[Any, Any]) -> None:
    await client.post("/services/create", json=spec())
    svc = await (await client.get("/services/web")).json()
    version = svc["meta"]["version"]
    r = await client.post(f"/services/web/update?version={version}", json=spec(image="busybox:2"))
    assert r.status == 200
    updated = await (await client.get("/services/web")).json()
    assert updated["status"]["update_state"] == UpdateState.UPDATING.value
    assert updated["previous_spec"]["task"]["container"]["image"] == "busybox"
    stale = await client.post(f"/services/web/update?version={version}", json=spec(image="busybox:3"))
    assert stale.status == 409 and "out of sequence" in (await stale.json())["message"]
    missing = await client.post("/services/web/update", json=spec())
    assert missing.status == 400 and "version" in (await missing.json())["message"]

    r = await client.post("/services/web/rollback")
    assert r.status == 200
    rolled = await (await client.get("/services/web")).json()
    assert rolled["spec"]["task"]["container"]["image"] == "busybox"
    assert rolled["status"]["update_state"] == UpdateState.ROLLBACK_STARTED.value


async def test_a_list_polled_again_shows_each_object_as_it_is_now(client: TestClient[Any, Any]) -> None:
    # Rendered objects are kept while they are current (pollers are served without encoding them again);
    # an object that changed is a new one and is rendered afresh.
    await client.post("/services/create", json=spec())
    first = await (await client.get("/services")).json()
    assert await (await client.get("/services")).json() == first
    version = first[0]["meta"]["version"]
    r = await client.post(f"/services/web/update?version={version}", json={**spec(), "replicas": 5})
    assert r.status == 200
    (now,) = await (await client.get("/services")).json()
    assert now["spec"]["replicas"] == 5 and now["meta"]["version"] > version


async def test_secrets_never_show_their_data(client: TestClient[Any, Any]) -> None:
    import base64

    body = {"annotations": {"name": "pw"}, "data": base64.b64encode(b"hunter2").decode()}
    assert (await client.post("/secrets/create", json=body)).status == 201
    shown = await (await client.get("/secrets/pw")).json()
    assert shown["spec"]["data"] == "" and shown["status"]["digest"].startswith("sha256:")
    assert "aHVudGVyMg" not in await (await client.get("/secrets")).text()
    # At rest the KV store holds it sealed, never in clear.
    store = client.server.app[STORE]
    raw = [kv.value async for kv in store.kv.iter_prefix("secrets/")]
    assert len(raw) == 1 and b"hunter2" not in raw[0] and b"shoal-aead-1" in raw[0]
    # Another manager with a different key cannot read it (and does not pretend to).
    other = ObjectStore(store.kv, SecretBox(os.urandom(32)))
    await other.start()
    assert other.objects(Secret) == []
    await other.stop()
    # The manager that sealed it can.
    assert store.find_by_name(Secret, "pw").spec.data == b"hunter2"


async def test_network_in_use_cannot_be_removed(client: TestClient[Any, Any]) -> None:
    r = await client.post(
        "/networks/create", json={"annotations": {"name": "backend"}, "ipam": [{"subnet": "10.9.0.0/24"}]}
    )
    assert r.status == 201
    body = spec()
    body["task"]["networks"] = [{"target": "backend"}]
    assert (await client.post("/services/create", json=body)).status == 201
    r = await client.delete("/networks/backend")
    assert r.status == 409 and "in use by service web" in (await r.json())["message"]
    bad = await client.post(
        "/networks/create", json={"annotations": {"name": "x"}, "ipam": [{"subnet": "10.9.0.1/24"}]}
    )
    assert bad.status == 400 and "host bits set" in (await bad.json())["message"]


async def test_events_stream_object_changes(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/events")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    await client.post("/services/create", json=spec(name="ev"))
    line = await asyncio.wait_for(resp.content.readline(), 5)
    event = json.loads(line.decode().removeprefix("data: "))
    assert (event["kind"], event["action"]) == ("services", "create")
    assert event["object"]["spec"]["annotations"]["name"] == "ev"
    resp.close()


async def test_openapi_document_covers_every_route_and_matches_the_codec(
    client: TestClient[Any, Any],
) -> None:
    doc = await (await client.get("/openapi.json")).json()
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in client.server.app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and route.resource.canonical != "/openapi.json"
    }
    assert served == set(OPERATIONS)
    assert set(doc["paths"]) == {p for _, p in OPERATIONS}
    # What the codec writes validates against the published schema.
    schema = {
        **doc["paths"]["/services/create"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    }
    schema["components"] = doc["components"]
    jsonschema.validate(spec(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**spec(), "replcas": 1}, schema)
    assert document() == doc
