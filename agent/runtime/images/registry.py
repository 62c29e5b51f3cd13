"""Pull and push images over the OCI distribution API (Docker Registry HTTP API v2).

Pull: fetch the manifest by tag or digest (OCI and Docker schema 2 manifests, manifest lists / OCI indexes
resolved to this host's platform), then the config and every layer not already in the store, a few at a
time, each verified against its digest while it is written. Push: for each blob, ``HEAD`` to skip what the
registry has, try a cross-repository mount from a repository the blob is known to be in, else upload it
in chunks (``POST`` a session, ``PATCH`` with ``Content-Range``, ``PUT ?digest=``); then ``PUT`` the
manifest. Progress is reported per layer with Docker's wording (``Pulling fs layer``, ``Downloading``,
``Already exists``, ``Pushed``, ``Mounted from …``).

Transport: HTTPS, verified against the system CAs plus the registry's own (see :mod:`.auth`). Plain HTTP
only for registries listed as insecure — for those, as Docker does, HTTPS without verification is tried
first. Anything else that does not speak verified HTTPS is refused with :class:`InsecureRegistry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from agent.runtime.errors import (
    BlobCorrupted,
    BlobNotFound,
    ImageNotFound,
    InsecureRegistry,
    InvalidImage,
    PlatformNotFound,
    RegistryError,
    RegistryUnauthorized,
    RemoteNotFound,
)
from agent.runtime.images.auth import Authorizer, RegistryOptions
from agent.runtime.images.image import Image
from agent.runtime.images.oci import MANIFEST_ACCEPT, Descriptor, Index, Manifest, Platform, parse_manifest
from agent.runtime.images.reference import Reference, parse_reference
from agent.runtime.images.store import ImageStore

MAX_MANIFEST = 4 << 20


@dataclass(frozen=True)
class Progress:
    """One progress message: ``id`` is a layer's short digest (or a tag), ``status`` Docker's wording."""

    id: str
    status: str
    current: int = 0
    total: int = 0

    def docker(self) -> dict[str, Any]:
        """The JSON line ``POST /images/create`` and ``/images/{name}/push`` stream."""
        out: dict[str, Any] = {"status": self.status}
        if self.id:
            out["id"] = self.id
        if self.total:
            out["progressDetail"] = {"current": self.current, "total": self.total}
        return out


ProgressCallback = Callable[[Progress], None]


async def _all(jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run ``jobs`` together; the first failure cancels the others and is raised as itself (not a group)."""
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(job)
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        raise first from None


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


class _Endpoint:
    """One registry host: its base URL once discovered, its TLS setting and its authorizer."""

    def __init__(self, host: str, session: aiohttp.ClientSession, options: RegistryOptions) -> None:
        self.host = host
        self.session = session
        self.options = options
        self.insecure = options.is_insecure(host)
        self.ssl: Any = False if self.insecure else options.ssl_context(host)
        self.base: URL | None = None
        self.auth = Authorizer(host, session, options.credentials_for(host), self.ssl)
        self._lock = asyncio.Lock()

    async def ensure(self) -> URL:
        """Find the scheme that works and the registry's challenge (``GET /v2/``), once."""
        async with self._lock:
            if self.base is not None:
                return self.base
            schemes = ["https", "http"] if self.insecure else ["https"]
            last: Exception | None = None
            for scheme in schemes:
                base = URL.build(scheme=scheme, authority=self.host)
                try:
                    headers = {"User-Agent": self.options.user_agent}
                    async with self.session.get(base / "v2/", ssl=self.ssl, headers=headers) as resp:
                        if resp.status == 401:
                            self.auth.update(resp.headers.get("WWW-Authenticate"))
                        elif resp.status != 200:
                            raise RegistryError(
                                self.host, f"GET /v2/ answered {resp.status}: not a v2 registry", resp.status
                            )
                    self.base = base
                    return base
                except (
                    aiohttp.ClientSSLError,
                    aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError,
                ) as exc:
                    last = exc
                    if scheme == "https" and not self.insecure:
                        raise InsecureRegistry(self.host, _tls_hint(exc)) from None
                except aiohttp.ClientError as exc:
                    last = exc
            raise RegistryError(self.host, f"cannot reach the registry: {last}")

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: URL | str,
        *,
        scopes: Sequence[str],
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One authorised request; a 401 refreshes the authorisation (new challenge or scope) and retries."""
        await self.ensure()
        target = self.absolute(url)
        for attempt in range(2):
            hdrs = {"User-Agent": self.options.user_agent, **(headers or {})}
            authorization = await self.auth.header(scopes, refresh=attempt > 0)
            if authorization:
                hdrs["Authorization"] = authorization
            try:
                resp = await self.session.request(method, target, headers=hdrs, data=data, ssl=self.ssl)
            except aiohttp.ClientError as exc:
                raise RegistryError(self.host, f"{method} {target.path}: {exc}") from None
            if resp.status == 401 and attempt == 0:
                self.auth.update(resp.headers.get("WWW-Authenticate"))
                resp.release()
                continue
            try:
                yield resp
            finally:
                resp.release()
            return

    def absolute(self, location: URL | str) -> URL:
        """``location`` (an upload ``Location`` may be relative) as an absolute URL on this registry."""
        url = URL(str(location)) if not isinstance(location, URL) else location
        if url.is_absolute():
            return url
        assert self.base is not None
        return self.base.join(url)

    def url(self, repository: str, *parts: str) -> URL:
        assert self.base is not None
        return self.base.with_path(f"/v2/{repository}/{'/'.join(parts)}", encoded=False)


def _tls_hint(exc: Exception) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
        return (
            f"TLS certificate not trusted ({text}); add the registry's CA "
            "(certs.d/<host>/ca.crt) or list the registry as insecure"
        )
    return (
        "the registry does not speak HTTPS (it looks like plain HTTP); list it as an insecure registry "
        "to use plain HTTP"
    )


async def _raise_for(resp: aiohttp.ClientResponse, host: str, what: str) -> None:
    """Turn an error response into the matching typed error (reading the registry's error JSON)."""
    code, message = "", ""
    with contextlib.suppress(Exception):
        body = await resp.json(content_type=None)
        first = (body.get("errors") or [{}])[0]
        code, message = str(first.get("code", "")), str(first.get("message", ""))
    detail = f"{what}: {message or resp.reason} ({resp.status}{' ' + code if code else ''})"
    if resp.status == 401:
        raise RegistryUnauthorized(host, detail, resp.status, code)
    if resp.status == 403:
        raise RegistryUnauthorized(host, detail, resp.status, code or "DENIED")
    if resp.status == 404:
        raise RemoteNotFound(host, detail, resp.status, code)
    raise RegistryError(host, detail, resp.status, code)


class RegistryClient:
    """Pull and push against registries, reading and writing one :class:`ImageStore`."""

    def __init__(
        self,
        store: ImageStore,
        options: RegistryOptions | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.store = store
        self.options = options or RegistryOptions()
        self._own_session = session is None
        self._session = session
        self._endpoints: dict[str, _Endpoint] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None
        self._endpoints.clear()

    def _endpoint(self, host: str) -> _Endpoint:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=120)
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._own_session = True
        endpoint = self._endpoints.get(host)
        if endpoint is None:
            endpoint = self._endpoints[host] = _Endpoint(host, self._session, self.options)
        return endpoint

    # --- pull ------------------------------------------------------------------------------------------
    async def resolve(self, reference: str) -> Descriptor:
        """What the registry serves for ``reference`` (digest, media type, size), without pulling it."""
        ref = parse_reference(reference)
        endpoint = self._endpoint(ref.registry)
        await endpoint.ensure()
        url = endpoint.url(ref.repository, "manifests", ref.digest or ref.tag or "latest")
        async with endpoint.request(
            "HEAD",
            url,
            scopes=[f"repository:{ref.repository}:pull"],
            headers={"Accept": ", ".join(MANIFEST_ACCEPT)},
        ) as resp:
            if resp.status != 200:
                await _raise_for(resp, ref.registry, f"manifest {ref.familiar}")
            digest = resp.headers.get("Docker-Content-Digest", "")
            if not digest:
                raise RegistryError(ref.registry, "no Docker-Content-Digest in the manifest's HEAD response")
            return Descriptor(
                resp.headers.get("Content-Type", ""), digest, int(resp.headers.get("Content-Length", 0))
            )

    async def pull(
        self, reference: str, *, platform: Platform | None = None, progress: ProgressCallback | None = None
    ) -> Image:
        """Pull ``reference`` into the store; layers already present are not downloaded again."""
        ref = parse_reference(reference)
        report = progress or (lambda _p: None)
        endpoint = self._endpoint(ref.registry)
        scopes = [f"repository:{ref.repository}:pull"]
        target = ref.digest or ref.tag or "latest"
        report(Progress(target, f"Pulling from {ref.familiar_name}"))
        raw, media_type, pulled = await self._manifest(endpoint, ref, target, scopes)
        parsed = parse_manifest(raw, media_type)
        if isinstance(parsed, Index):
            wanted = platform or Platform.host()
            chosen = parsed.select(wanted)
            if chosen is None:
                raise PlatformNotFound(ref.registry, f"{ref.familiar}: no manifest for {wanted}")
            raw, media_type, _ = await self._manifest(endpoint, ref, chosen.digest, scopes)
            parsed = parse_manifest(raw, media_type)
            if not isinstance(parsed, Manifest):
                raise InvalidImage(chosen.digest, "an index entry that is not an image manifest")
        manifest = parsed
        refs = [] if ref.digest else [str(ref.tagged())]
        refs.append(str(ref.with_digest(pulled)))
        existed = self.store.exists(str(ref.with_digest(pulled))) or (
            ref.tag is not None and self._same_image(str(ref.tagged()), manifest.digest)
        )
        semaphore = asyncio.Semaphore(self.options.max_concurrent)

        async def one(layer: Descriptor) -> None:
            async with semaphore:
                await self._fetch(endpoint, ref, layer, scopes, report)

        for attempt in range(2):
            await self._fetch(endpoint, ref, manifest.config, scopes, None)

            await _all(one(layer) for layer in manifest.layers)
            try:
                image = self.store.add(manifest, refs)
                break
            except BlobNotFound:
                # Removed by a concurrent image removal between our check and the commit: fetch again.
                if attempt == 1:
                    raise
        digests = [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
        self.store.record_source(digests, ref.registry, ref.repository)
        report(Progress("", f"Digest: {pulled}"))
        verdict = "Image is up to date for" if existed else "Downloaded newer image for"
        report(Progress("", f"Status: {verdict} {ref.familiar}"))
        return image

    def _same_image(self, name: str, manifest_digest: str) -> bool:
        try:
            return self.store.get(name).manifest_digest == manifest_digest
        except ImageNotFound:
            return False

    async def _manifest(
        self, endpoint: _Endpoint, ref: Reference, target: str, scopes: Sequence[str]
    ) -> tuple[bytes, str, str]:
        """Manifest bytes, content type and digest, verified against ``target`` when it is a digest."""
        await endpoint.ensure()
        url = endpoint.url(ref.repository, "manifests", target)
        async with endpoint.request(
            "GET", url, scopes=scopes, headers={"Accept": ", ".join(MANIFEST_ACCEPT)}
        ) as resp:
            if resp.status != 200:
                await _raise_for(resp, ref.registry, f"manifest for {ref.familiar}")
            raw = await resp.content.read(MAX_MANIFEST + 1)
            if len(raw) > MAX_MANIFEST:
                raise InvalidImage(ref.familiar, "manifest larger than 4 MiB")
            content_type = resp.headers.get("Content-Type", "")
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        actual = "sha256:" + hashlib.sha256(raw).hexdigest()
        expected = target if ":" in target else (header_digest if header_digest.startswith("sha256:") else "")
        if expected and expected != actual:
            raise BlobCorrupted(expected, actual, f"manifest of {ref.familiar}")
        return raw, content_type, actual

    async def _fetch(
        self,
        endpoint: _Endpoint,
        ref: Reference,
        blob: Descriptor,
        scopes: Sequence[str],
        report: ProgressCallback | None,
    ) -> None:
        short = _short(blob.digest)
        if self.store.blobs.exists(blob.digest):
            if report:
                report(Progress(short, "Already exists"))
            return
        if report:
            report(Progress(short, "Pulling fs layer"))
        url = endpoint.url(ref.repository, "blobs", blob.digest)
        async with endpoint.request("GET", url, scopes=scopes) as resp:
            if resp.status != 200:
                await _raise_for(resp, ref.registry, f"blob {blob.digest}")
            with self.store.blobs.writer(blob.digest, blob.size) as writer:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    writer.write(chunk)
                    if report:
                        report(Progress(short, "Downloading", writer.written, blob.size))
                if report:
                    report(Progress(short, "Verifying Checksum"))
                writer.commit()
        if report:
            report(Progress(short, "Download complete"))
            report(Progress(short, "Pull complete"))

    # --- push ------------------------------------------------------------------------------------------
    async def push(self, reference: str, *, progress: ProgressCallback | None = None) -> str:
        """Push the local image ``reference`` (``host/repo:tag``); returns the manifest digest."""
        ref = parse_reference(reference)
        if ref.digest is not None:
            raise RegistryError(ref.registry, "push a tag, not a digest")
        report = progress or (lambda _p: None)
        try:
            image = self.store.get(str(ref))
        except ImageNotFound:
            raise ImageNotFound(f"{ref.familiar} (an image does not exist locally with that tag)") from None
        endpoint = self._endpoint(ref.registry)
        await endpoint.ensure()
        report(Progress("", f"The push refers to repository [{ref.familiar_name}]"))
        semaphore = asyncio.Semaphore(self.options.max_concurrent)

        async def one(blob: Descriptor, show: bool) -> None:
            async with semaphore:
                await self._push_blob(endpoint, ref, blob, report if show else None)

        await _all(one(layer, True) for layer in image.manifest.layers)
        await one(image.manifest.config, False)
        manifest = image.manifest
        url = endpoint.url(ref.repository, "manifests", ref.tag or "latest")
        scopes = [f"repository:{ref.repository}:pull,push"]
        async with endpoint.request(
            "PUT", url, scopes=scopes, headers={"Content-Type": manifest.media_type}, data=manifest.raw
        ) as resp:
            if resp.status not in (200, 201):
                await _raise_for(resp, ref.registry, f"manifest {ref.familiar}")
            returned = resp.headers.get("Docker-Content-Digest", manifest.digest)
        if returned != manifest.digest:
            raise BlobCorrupted(manifest.digest, returned, f"manifest pushed to {ref.familiar}")
        digests = [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
        self.store.record_source(digests, ref.registry, ref.repository)
        self.store.add(
            manifest, [*image.repo_tags, *image.repo_digests, str(ref.with_digest(manifest.digest))]
        )
        report(Progress("", f"{ref.tag}: digest: {manifest.digest} size: {len(manifest.raw)}"))
        return manifest.digest

    async def _push_blob(
        self, endpoint: _Endpoint, ref: Reference, blob: Descriptor, report: ProgressCallback | None
    ) -> None:
        short = _short(blob.digest)
        repo = ref.repository
        scopes = [f"repository:{repo}:pull,push"]
        if report:
            report(Progress(short, "Preparing"))
        async with endpoint.request("HEAD", endpoint.url(repo, "blobs", blob.digest), scopes=scopes) as resp:
            if resp.status == 200:
                if report:
                    report(Progress(short, "Layer already exists"))
                return
        location: str | None = None
        for source in self.store.sources(blob.digest, ref.registry):
            if source == repo:
                continue
            url = endpoint.url(repo, "blobs", "uploads/").with_query(mount=blob.digest, **{"from": source})
            async with endpoint.request("POST", url, scopes=[*scopes, f"repository:{source}:pull"]) as resp:
                if resp.status == 201:
                    if report:
                        report(Progress(short, f"Mounted from {source}"))
                    return
                if resp.status == 202:
                    location = resp.headers.get("Location")
                    break
        if location is None:
            async with endpoint.request(
                "POST", endpoint.url(repo, "blobs", "uploads/"), scopes=scopes
            ) as resp:
                if resp.status != 202:
                    await _raise_for(resp, ref.registry, f"starting upload of {short}")
                location = resp.headers.get("Location")
        if not location:
            raise RegistryError(ref.registry, "upload session without a Location")
        try:
            location = await self._upload(endpoint, ref, blob, location, scopes, report)
        except BaseException:
            with contextlib.suppress(Exception):
                async with endpoint.request("DELETE", location, scopes=scopes):
                    pass
            raise
        if report:
            report(Progress(short, "Pushed"))

    async def _upload(
        self,
        endpoint: _Endpoint,
        ref: Reference,
        blob: Descriptor,
        location: str,
        scopes: Sequence[str],
        report: ProgressCallback | None,
    ) -> str:
        """PATCH the blob in chunks, then PUT with the digest; returns the last upload location."""
        short = _short(blob.digest)
        offset = 0
        with self.store.blobs.open(blob.digest) as reader:
            # The reader checks the digest when it reaches the end, before the final PUT: a blob damaged
            # on disk is never committed.
            while chunk := reader.read(self.options.chunk_size):
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    "Content-Length": str(len(chunk)),
                }
                async with endpoint.request(
                    "PATCH", location, scopes=scopes, headers=headers, data=chunk
                ) as resp:
                    if resp.status != 202:
                        await _raise_for(resp, ref.registry, f"uploading {short}")
                    location = resp.headers.get("Location", location)
                offset += len(chunk)
                if report:
                    report(Progress(short, "Pushing", offset, blob.size))
        put_url = endpoint.absolute(location).update_query(digest=blob.digest)
        async with endpoint.request("PUT", put_url, scopes=scopes, headers={"Content-Length": "0"}) as resp:
            if resp.status != 201:
                await _raise_for(resp, ref.registry, f"committing {short}")
        return location
