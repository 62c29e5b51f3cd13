"""Pull and push against a real registry (docker-registry on loopback): round trips, layer reuse, blob
mounts, corruption, manifest lists, Docker schema 2, and the transport and auth rules (plain HTTP only when
listed insecure, TLS with the registry's CA, Basic auth with htpasswd, Bearer tokens).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from agent.runtime.errors import (
    BlobCorrupted,
    ImageNotFound,
    InsecureRegistry,
    PlatformNotFound,
    RegistryUnauthorized,
    RemoteNotFound,
)
from agent.runtime.images.auth import Credentials, RegistryOptions
from agent.runtime.images.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    Descriptor,
    ImageConfig,
    Manifest,
    Platform,
    canonical_json,
)
from agent.runtime.images.registry import Progress, RegistryClient
from agent.runtime.images.store import ImageStore
from tests.integration.runtime.images.support import (
    RegistryServer,
    TokenAuth,
    flip_byte,
    requires_registry,
    token_service,
    unique_repo,
)

pytestmark = requires_registry


def insecure(server: RegistryServer, **kw: object) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset({server.host}), certs_dir=None, **kw)  # type: ignore[arg-type]


class BlobRequests:
    """Counts blob GETs the client really sends (an aiohttp trace on the session it uses)."""

    def __init__(self) -> None:
        self.gets: list[str] = []
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._on_start)

    async def _on_start(self, session: object, ctx: object, params: aiohttp.TraceRequestStartParams) -> None:
        if params.method == "GET" and "/blobs/" in params.url.path:
            self.gets.append(params.url.path.rpartition("/")[2])


@pytest.fixture
def other_store(tmp_path: Path) -> Iterator[ImageStore]:
    yield ImageStore(tmp_path / "other-images")


async def test_push_remove_pull_round_trip(image_store: ImageStore, registry: RegistryServer) -> None:
    name = f"{registry.host}/{unique_repo('busybox')}:1"
    image_store.tag("busybox", name)
    local = image_store.get(name)
    events: list[Progress] = []
    # A small chunk size so the layer goes up in several PATCH requests.
    async with RegistryClient(image_store, insecure(registry, chunk_size=256 * 1024)) as client:
        digest = await client.push(name, progress=events.append)
    assert digest == local.manifest_digest
    pushes = [e for e in events if e.status == "Pushing"]
    assert len(pushes) >= 4 and pushes[-1].current == pushes[-1].total == local.manifest.layers[0].size
    assert any(e.status == "Pushed" for e in events)

    # The registry has what we pushed, byte for byte.
    repo = name.partition("/")[2].partition(":")[0]
    async with aiohttp.ClientSession() as session:
        url = f"http://{registry.host}/v2/{repo}/manifests/1"
        async with session.get(url, headers={"Accept": local.manifest.media_type}) as resp:
            assert resp.status == 200
            assert await resp.read() == local.manifest.raw
            assert resp.headers["Docker-Content-Digest"] == local.manifest_digest

    image_store.remove(name)
    image_store.remove("busybox")
    assert image_store.images() == []
    async with RegistryClient(image_store, insecure(registry)) as client:
        pulled = await client.pull(name)
    assert (pulled.id, pulled.manifest_digest, pulled.diff_ids) == (
        local.id,
        local.manifest_digest,
        local.diff_ids,
    )
    assert [d.digest for d in pulled.manifest.layers] == [d.digest for d in local.manifest.layers]
    assert pulled.repo_digests == (f"{name.rpartition(':')[0]}@{digest}",)
    for layer in pulled.manifest.layers:
        image_store.blobs.verify(layer.digest)


async def test_second_pull_downloads_no_layer(
    image_store: ImageStore, other_store: ImageStore, registry: RegistryServer
) -> None:
    name = f"{registry.host}/{unique_repo('again')}:latest"
    image_store.tag("busybox", name)
    async with RegistryClient(image_store, insecure(registry)) as client:
        await client.push(name)
    counter = BlobRequests()
    async with aiohttp.ClientSession(trace_configs=[counter.config]) as session:
        client = RegistryClient(other_store, insecure(registry), session=session)
        first: list[Progress] = []
        await client.pull(name, progress=first.append)
        assert len(counter.gets) == 2, "config and the one layer"
        second: list[Progress] = []
        await client.pull(name, progress=second.append)
        assert len(counter.gets) == 2, "nothing downloaded the second time"
    layer = _short(image_store.get(name).manifest.layers[0].digest)
    assert (layer, "Pull complete") in [(p.id, p.status) for p in first]
    assert (layer, "Already exists") in [(p.id, p.status) for p in second]
    assert second[-1].status.startswith("Status: Image is up to date for")
    assert first[-1].status.startswith("Status: Downloaded newer image for")


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


async def test_push_skips_existing_blobs_and_mounts_across_repositories(
    image_store: ImageStore, registry: RegistryServer
) -> None:
    first = f"{registry.host}/{unique_repo('first')}:1"
    second = f"{registry.host}/{unique_repo('second')}:1"
    image_store.tag("busybox", first)
    image_store.tag("busybox", second)
    async with RegistryClient(image_store, insecure(registry)) as client:
        await client.push(first)
        again: list[Progress] = []
        await client.push(first, progress=again.append)
        mounted: list[Progress] = []
        await client.push(second, progress=mounted.append)
    assert "Layer already exists" in [p.status for p in again]
    source_repo = first.partition("/")[2].partition(":")[0]
    assert f"Mounted from {source_repo}" in [p.status for p in mounted]
    assert "Pushing" not in [p.status for p in mounted]


async def test_corrupted_blob_in_the_registry_is_detected(
    image_store: ImageStore, other_store: ImageStore, tmp_path: Path
) -> None:
    # A registry of its own: blobs are shared by every repository of a registry.
    with RegistryServer(tmp_path / "registry") as own:
        name = f"{own.host}/corrupt:1"
        image_store.tag("busybox", name)
        async with RegistryClient(image_store, insecure(own)) as client:
            await client.push(name)
        layer = image_store.get(name).manifest.layers[0]
        flip_byte(own.blob_data(layer.digest))
        async with RegistryClient(other_store, insecure(own)) as client:
            with pytest.raises(BlobCorrupted) as info:
                await client.pull(name)
    assert info.value.expected == layer.digest
    assert not other_store.blobs.exists(layer.digest)
    assert other_store.images() == []
    assert list(other_store.blobs.ingest_dir.iterdir()) == [], "no partial download left behind"


async def test_corrupted_local_blob_is_never_pushed(
    image_store: ImageStore, registry: RegistryServer
) -> None:
    name = f"{registry.host}/{unique_repo('localbad')}:1"
    image_store.tag("busybox", name)
    layer = image_store.get(name).manifest.layers[0]
    flip_byte(image_store.blobs.path(layer.digest))
    async with RegistryClient(image_store, insecure(registry, chunk_size=128 * 1024)) as client:
        with pytest.raises(BlobCorrupted):
            await client.push(name)
    repo = name.partition("/")[2].partition(":")[0]
    async with aiohttp.ClientSession() as session:
        async with session.head(f"http://{registry.host}/v2/{repo}/blobs/{layer.digest}") as resp:
            assert resp.status == 404
        async with session.get(f"http://{registry.host}/v2/{repo}/manifests/1") as resp:
            assert resp.status == 404


async def test_unknown_image_and_unknown_local_tag(image_store: ImageStore, registry: RegistryServer) -> None:
    async with RegistryClient(image_store, insecure(registry)) as client:
        with pytest.raises(RemoteNotFound):
            await client.pull(f"{registry.host}/{unique_repo('nothing')}:1")
        with pytest.raises(ImageNotFound):
            await client.push(f"{registry.host}/not-local:1")


async def test_plain_http_needs_the_registry_listed_as_insecure(
    image_store: ImageStore, registry: RegistryServer
) -> None:
    name = f"{registry.host}/{unique_repo('plain')}:1"
    image_store.tag("busybox", name)
    async with RegistryClient(image_store, RegistryOptions(certs_dir=None)) as client:
        with pytest.raises(InsecureRegistry) as info:
            await client.push(name)
    assert "insecure" in str(info.value)
    # Listed by address range, as Docker's insecure-registries allows.
    async with RegistryClient(image_store, RegistryOptions(insecure=frozenset({"127.0.0.0/8"}))) as client:
        await client.push(name)


async def _push_platform_images(
    store: ImageStore, server: RegistryServer, repo: str
) -> dict[str, Descriptor]:
    """Push the busybox image twice by digest, once as the host's platform and once as riscv64."""
    base = store.get("busybox")
    out = {}
    async with RegistryClient(store, insecure(server)) as client:
        for arch in (Platform.host().architecture, "riscv64"):
            body = json.loads(base.config.raw)
            body["architecture"] = arch
            config = ImageConfig.parse(canonical_json(body))
            store.blobs.write(config.raw)
            manifest = Manifest.build(
                Descriptor(base.manifest.config.media_type, config.digest, len(config.raw)),
                base.manifest.layers,
            )
            tag = f"{server.host}/{repo}:{arch}"
            store.add(manifest, [tag])
            await client.push(tag)
            out[arch] = Descriptor(
                manifest.media_type, manifest.digest, len(manifest.raw), Platform("linux", arch)
            )
    return out


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
async def test_manifest_list_picks_the_host_platform(
    image_store: ImageStore, other_store: ImageStore, registry: RegistryServer, media_type: str
) -> None:
    repo = unique_repo("multi")
    entries = await _push_platform_images(image_store, registry, repo)
    index = canonical_json(
        {"schemaVersion": 2, "mediaType": media_type, "manifests": [d.to_json() for d in entries.values()]}
    )
    async with aiohttp.ClientSession() as session:
        url = f"http://{registry.host}/v2/{repo}/manifests/multi"
        async with session.put(url, data=index, headers={"Content-Type": media_type}) as resp:
            assert resp.status == 201, await resp.text()
    name = f"{registry.host}/{repo}:multi"
    async with RegistryClient(other_store, insecure(registry)) as client:
        pulled = await client.pull(name)
        assert pulled.config.architecture == Platform.host().architecture
        assert pulled.manifest_digest == entries[Platform.host().architecture].digest
        other = await client.pull(f"{registry.host}/{repo}:multi", platform=Platform("linux", "riscv64"))
        assert other.config.architecture == "riscv64"
        with pytest.raises(PlatformNotFound):
            await client.pull(name, platform=Platform("linux", "s390x"))
        remote = await client.resolve(name)
    assert remote.media_type == media_type
    assert remote.digest == "sha256:" + hashlib.sha256(index).hexdigest()


async def test_docker_schema2_images_round_trip(
    image_store: ImageStore, other_store: ImageStore, registry: RegistryServer
) -> None:
    base = image_store.get("busybox")
    layer = base.manifest.layers[0]
    assert gzip.decompress(
        image_store.blobs.read(layer.digest)
    )  # the busybox layer is gzip: fits Docker's type
    manifest = Manifest.build(
        Descriptor(DOCKER_CONFIG, base.id, len(base.config.raw)),
        [Descriptor(DOCKER_LAYER_GZIP, layer.digest, layer.size)],
        media_type=DOCKER_MANIFEST,
    )
    name = f"{registry.host}/{unique_repo('schema2')}:1"
    image_store.add(manifest, [name])
    async with RegistryClient(image_store, insecure(registry)) as client:
        await client.push(name)
    async with RegistryClient(other_store, insecure(registry)) as client:
        pulled = await client.pull(name)
    assert pulled.manifest.media_type == DOCKER_MANIFEST
    assert pulled.manifest_digest == manifest.digest
    assert pulled.id == base.id


async def test_basic_auth_with_htpasswd(
    image_store: ImageStore, other_store: ImageStore, tmp_path: Path
) -> None:
    with RegistryServer(tmp_path / "registry", users={"alice": "s3cret"}) as server:
        name = f"{server.host}/private:1"
        image_store.tag("busybox", name)
        async with RegistryClient(image_store, insecure(server)) as client:
            with pytest.raises(RegistryUnauthorized):
                await client.push(name)
        wrong = insecure(server, credentials={server.host: Credentials("alice", "nope")})
        async with RegistryClient(image_store, wrong) as client:
            with pytest.raises(RegistryUnauthorized):
                await client.push(name)
        right = insecure(server, credentials={server.host: Credentials("alice", "s3cret")})
        async with RegistryClient(image_store, right) as client:
            digest = await client.push(name)
        async with RegistryClient(other_store, right) as client:
            assert (await client.pull(name)).manifest_digest == digest


async def test_bearer_token_auth(image_store: ImageStore, other_store: ImageStore, tmp_path: Path) -> None:
    async with token_service(tmp_path, {"bob": "hunter2"}) as tokens:
        auth = TokenAuth(realm=tokens.url, signer=tokens.signer)
        with RegistryServer(tmp_path / "registry", token=auth) as server:
            name = f"{server.host}/team/app:1"
            image_store.tag("busybox", name)
            creds = insecure(server, credentials={server.host: Credentials("bob", "hunter2")})
            async with RegistryClient(image_store, creds) as client:
                digest = await client.push(name)
            assert {"user": "bob", "scopes": ["repository:team/app:pull,push"], "service": auth.service} in (
                tokens.requests
            )
            # Anonymous pull: the token service grants pull to anyone.
            async with RegistryClient(other_store, insecure(server)) as client:
                assert (await client.pull(name)).manifest_digest == digest
            # Anonymous push: the token carries no push right, the registry refuses.
            image_store.tag("busybox", f"{server.host}/team/app:2")
            async with RegistryClient(image_store, insecure(server)) as client:
                with pytest.raises(RegistryUnauthorized):
                    await client.push(f"{server.host}/team/app:2")
            bad = insecure(server, credentials={server.host: Credentials("bob", "wrong")})
            async with RegistryClient(image_store, bad) as client:
                with pytest.raises(RegistryUnauthorized):
                    await client.push(name)


async def test_tls_with_the_registry_ca(
    image_store: ImageStore, other_store: ImageStore, tmp_path: Path
) -> None:
    with RegistryServer(tmp_path / "registry", tls=True) as server:
        assert server.ca is not None
        name = f"{server.host}/secure:1"
        image_store.tag("busybox", name)
        async with RegistryClient(image_store, RegistryOptions(certs_dir=None)) as client:
            with pytest.raises(InsecureRegistry) as info:
                await client.push(name)
        assert "certificate" in str(info.value)
        with_ca = RegistryOptions(ca_files={server.host: str(server.ca.cert)}, certs_dir=None)
        async with RegistryClient(image_store, with_ca) as client:
            digest = await client.push(name)
        # The Docker-style certs.d directory works too.
        certs = tmp_path / "certs.d" / server.host
        certs.mkdir(parents=True)
        (certs / "ca.crt").write_bytes(server.ca.cert.read_bytes())
        async with RegistryClient(other_store, RegistryOptions(certs_dir=tmp_path / "certs.d")) as client:
            assert (await client.pull(name)).manifest_digest == digest
        # Listed as insecure, a TLS registry is used without verification (HTTPS first, as Docker does).
        async with RegistryClient(ImageStore(tmp_path / "third"), insecure(server)) as client:
            assert (await client.pull(name)).manifest_digest == digest
