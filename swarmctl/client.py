"""A small synchronous client of the manager's HTTP API, over a unix socket, HTTP or HTTPS.

A command line makes a handful of requests and then exits, so a blocking client on one kept-alive
connection is simpler and starts faster than an event loop. Responses are decoded into the object model
(api.codec), so commands work with typed objects; every error status becomes :class:`APIError` carrying the
manager's message, and every connection failure :class:`ManagerUnreachable` naming the address.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from api import Cluster, Network, Node, Secret, Service, Task, Volume, from_plain, to_plain
from api.join import CLIENT_CERT_PATH, ROTATE_TOKEN_PATH, CertificateReply, ClientCertificateRequest
from api.objects import NetworkSpec, NodeSpec, SecretSpec, ServiceSpec, VolumeSpec
from swarmctl.errors import APIError, InvalidValue, ManagerUnreachable

T = TypeVar("T")

DEFAULT_HOST = "unix:///run/shoal/manager.sock"
#: Where TLS material is looked for when not given (ca.pem, cert.pem, key.pem), as ~/.docker is.
DEFAULT_CONFIG_DIR = "~/.shoal"


@dataclass(frozen=True)
class HostAddress:
    """Where the manager listens: ``scheme`` is unix, http or https; ``path`` for unix sockets."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_host(raw: str, *, tls: bool = False) -> HostAddress:
    """``unix:///run/shoal/manager.sock``, ``http(s)://host:port``, ``tcp://host:port`` or ``host:port``."""
    text = raw.strip()
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise InvalidValue("host", raw, "a unix socket needs an absolute path (unix:///path)")
        return HostAddress("unix", path=path)
    if text.startswith("/"):
        return HostAddress("unix", path=text)
    if "://" not in text:
        text = "tcp://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("tcp", "http", "https") or not parts.hostname:
        raise InvalidValue("host", raw, "use unix:///path, http://host:port or https://host:port")
    scheme = "https" if parts.scheme == "https" or (parts.scheme == "tcp" and tls) else "http"
    try:
        port = parts.port or 2377
    except ValueError:
        raise InvalidValue("host", raw, "bad port") from None
    return HostAddress(scheme, host=parts.hostname, port=port)


@dataclass(frozen=True)
class TLSOptions:
    """Client-side TLS: a CA to verify the manager with, and a client certificate for mTLS."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca or None)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key or None)
        return ctx

    @classmethod
    def from_dir(
        cls, config_dir: str, *, ca: str = "", cert: str = "", key: str = "", verify: bool = True
    ) -> TLSOptions:
        """Options with files not given taken from ``config_dir`` when they exist there."""
        base = Path(config_dir).expanduser()

        def pick(given: str, name: str) -> str:
            if given:
                return given
            candidate = base / name
            return str(candidate) if candidate.is_file() else ""

        return cls(
            ca=pick(ca, "ca.pem"), cert=pick(cert, "cert.pem"), key=pick(key, "key.pem"), verify=verify
        )


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the manager's local socket, like docker.sock)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """The manager's API as typed calls. Not thread-safe; one per command invocation."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        *,
        tls: TLSOptions | None = None,
        timeout: float = 30.0,
        debug: bool = False,
    ) -> None:
        self.address = parse_host(host, tls=tls is not None)
        self.tls = tls
        self.timeout = timeout
        self.debug = debug
        self._conn: http.client.HTTPConnection | None = None

    # --- transport --------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = self._new_connection()
        return self._conn

    def _new_connection(self) -> http.client.HTTPConnection:
        a = self.address
        if a.scheme == "unix":
            return _UnixConnection(a.path, self.timeout)
        if a.scheme == "https":
            ctx = (self.tls or TLSOptions()).context()
            return http.client.HTTPSConnection(a.host, a.port, timeout=self.timeout, context=ctx)
        return http.client.HTTPConnection(a.host, a.port, timeout=self.timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """One request; the decoded JSON body (None for an empty one). Raises APIError on error statuses."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if self.debug:
            print(f"> {method} {path}", file=sys.stderr)
        status, data = self._send(method, path, payload, headers)
        if self.debug:
            print(f"< {status} ({len(data)} bytes)", file=sys.stderr)
        parsed: Any = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        if status >= 400:
            message = parsed.get("message") if isinstance(parsed, dict) else None
            if not message:
                message = data.decode(errors="replace").strip() or http.client.responses.get(status, "error")
            raise APIError(status, str(message), method, path)
        return parsed

    def _send(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        # One retry on a fresh connection: a kept-alive connection the server closed in between is normal.
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
                self.close()
                if attempt == 2:
                    reason = _reason(e)
                    if self.address.scheme == "http":
                        reason += " (a manager's TCP port speaks TLS: use --tlsverify)"
                    raise ManagerUnreachable(str(self.address), reason) from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise ManagerUnreachable(str(self.address), _reason(e)) from None
        raise AssertionError("unreachable")

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """GET an NDJSON stream (logs): each object as its line arrives, on a connection of its own and
        without a read timeout (a followed stream may stay quiet for long). Raises APIError before the
        first object if the manager refuses."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        if self.debug:
            print(f"> GET {path}", file=sys.stderr)
        conn = self._new_connection()
        try:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise ManagerUnreachable(str(self.address), _reason(e)) from None
            if resp.status >= 400:
                data = resp.read()
                try:
                    message = json.loads(data).get("message", "")
                except (ValueError, AttributeError):
                    message = ""
                raise APIError(resp.status, message or data.decode(errors="replace").strip(), "GET", path)
            if conn.sock is not None:
                conn.sock.settimeout(None)
            try:
                for raw in resp:
                    if raw.strip():
                        try:
                            obj = json.loads(raw)
                        except ValueError:
                            raise APIError(200, f"not a log line: {raw[:100]!r}", "GET", path) from None
                        yield obj
            except (OSError, http.client.HTTPException) as e:
                raise ManagerUnreachable(str(self.address), f"the stream broke: {_reason(e)}") from None
        finally:
            conn.close()

    @contextmanager
    def open_stream(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        data: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[Response]:
        """Send one request on a connection of its own, with no read timeout (a followed log, a pull, a
        ``stop -t 60`` may take long), and give the response to read as it comes. ``body`` is sent as JSON,
        ``data`` as it is (bytes or a file, whose size is then sent as Content-Length). Raises APIError
        before yielding when the status is an error."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        sent = dict(headers or {})
        payload: bytes | BinaryIO | None = data
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            sent.setdefault("Content-Type", "application/json")
        if payload is not None and not isinstance(payload, bytes):
            sent.setdefault("Content-Length", str(_remaining(payload)))
        if self.debug:
            print(f"> {method} {path} (stream)", file=sys.stderr)
        conn = self._new_connection()
        try:
            try:
                conn.connect()
                if conn.sock is not None:
                    conn.sock.settimeout(None)
                conn.request(method, path, body=payload, headers=sent)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise ManagerUnreachable(str(self.address), _reason(e)) from None
            if self.debug:
                print(f"< {resp.status}", file=sys.stderr)
            if resp.status >= 400:
                raise _api_error(resp.status, _read_all(resp, self.address), method, path)
            yield Response(resp, str(self.address))
        finally:
            conn.close()

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def _typed(self, tp: type[T], data: Any) -> T:
        return from_plain(tp, data)

    def _list(self, tp: type[T], data: Any) -> list[T]:
        return [from_plain(tp, item, path=f"[{i}]") for i, item in enumerate(data or [])]

    # --- services ---------------------------------------------------------------------------------
    def services(self) -> list[Service]:
        return self._list(Service, self.get("/services"))

    def service(self, ref: str) -> Service:
        return self._typed(Service, self.get(f"/services/{_q(ref)}"))

    def create_service(self, spec: ServiceSpec) -> str:
        return str(self.request("POST", "/services/create", body=to_plain(spec))["id"])

    def update_service(self, service: Service, spec: ServiceSpec) -> int:
        """Write ``spec`` over ``service`` as read (conditional on its version); the new version."""
        reply = self.request(
            "POST",
            f"/services/{_q(service.meta.id)}/update",
            query={"version": service.meta.version},
            body=to_plain(spec),
        )
        return int(reply["version"])

    def rollback_service(self, ref: str) -> int:
        return int(self.request("POST", f"/services/{_q(ref)}/rollback")["version"])

    def remove_service(self, ref: str) -> None:
        self.request("DELETE", f"/services/{_q(ref)}")

    # --- tasks ------------------------------------------------------------------------------------
    def tasks(
        self, *, service: str | None = None, node: str | None = None, desired_state: str | None = None
    ) -> list[Task]:
        query = {"service": service, "node": node, "desired-state": desired_state}
        return self._list(Task, self.get("/tasks", **{k: v for k, v in query.items() if v}))

    def task(self, ref: str) -> Task:
        return self._typed(Task, self.get(f"/tasks/{_q(ref)}"))

    # --- nodes ------------------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return self._list(Node, self.get("/nodes"))

    def node(self, ref: str) -> Node:
        return self._typed(Node, self.get(f"/nodes/{_q(ref)}"))

    def update_node(self, node: Node, spec: NodeSpec) -> int:
        reply = self.request(
            "POST",
            f"/nodes/{_q(node.meta.id)}/update",
            query={"version": node.meta.version},
            body=to_plain(spec),
        )
        return int(reply["version"])

    def remove_node(self, ref: str, *, force: bool = False) -> None:
        self.request("DELETE", f"/nodes/{_q(ref)}", query={"force": "1"} if force else None)

    # --- networks, volumes, secrets ---------------------------------------------------------------
    def networks(self) -> list[Network]:
        return self._list(Network, self.get("/networks"))

    def network(self, ref: str) -> Network:
        return self._typed(Network, self.get(f"/networks/{_q(ref)}"))

    def create_network(self, spec: NetworkSpec) -> str:
        return str(self.request("POST", "/networks/create", body=to_plain(spec))["id"])

    def remove_network(self, ref: str) -> None:
        self.request("DELETE", f"/networks/{_q(ref)}")

    def volumes(self) -> list[Volume]:
        return self._list(Volume, self.get("/volumes"))

    def volume(self, ref: str) -> Volume:
        return self._typed(Volume, self.get(f"/volumes/{_q(ref)}"))

    def create_volume(self, spec: VolumeSpec) -> str:
        return str(self.request("POST", "/volumes/create", body=to_plain(spec))["id"])

    def remove_volume(self, ref: str) -> None:
        self.request("DELETE", f"/volumes/{_q(ref)}")

    def secrets(self) -> list[Secret]:
        return self._list(Secret, self.get("/secrets"))

    def secret(self, ref: str) -> Secret:
        return self._typed(Secret, self.get(f"/secrets/{_q(ref)}"))

    def create_secret(self, spec: SecretSpec) -> str:
        return str(self.request("POST", "/secrets/create", body=to_plain(spec))["id"])

    def remove_secret(self, ref: str) -> None:
        self.request("DELETE", f"/secrets/{_q(ref)}")

    # --- the cluster ------------------------------------------------------------------------------
    def cluster(self) -> Cluster:
        return self._typed(Cluster, self.get("/swarm"))

    def rotate_join_token(self, role: str) -> str:
        """Replace the join token of ``role`` (worker or manager); the new token."""
        return str(self.request("POST", ROTATE_TOKEN_PATH, query={"role": role})["token"])

    def client_certificate(self, public_key_pem: str) -> CertificateReply:
        """An administrator's client certificate for ``public_key_pem`` (unix socket or manager only)."""
        body = to_plain(ClientCertificateRequest(public_key=public_key_pem))
        return self._typed(CertificateReply, self.request("POST", CLIENT_CERT_PATH, body=body))

    def find(self, getter: Any, ref: str) -> Any:
        """``getter(ref)``, or None when the manager says it does not exist."""
        try:
            return getter(ref)
        except APIError as e:
            if e.not_found:
                return None
            raise

    # --- containers and images on the nodes (classic Swarm) -------------------------------------------
    def containers(
        self, *, stopped: bool = False, filters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Docker container summaries of every connected node, each with its ``Node`` (``stopped``:
        ``all=1``, stopped containers too)."""
        query: dict[str, Any] = {"all": "1" if stopped else "0"}
        if filters:
            query["filters"] = json.dumps(filters, separators=(",", ":"))
        return list(self.request("GET", "/containers/json", query=query) or [])

    def container(self, ref: str) -> dict[str, Any]:
        """A container's Docker inspect body with its ``Node``; ``ref`` is an id (prefix), a name or
        ``NODE/NAME``."""
        return dict(self.get(f"/containers/{_q(ref)}/json"))

    def create_container(self, body: dict[str, Any], name: str = "", node: str = "") -> dict[str, Any]:
        """Create a container where the scheduler places it (on ``node``, a hostname or id, when given):
        ``{"Id", "Warnings", "Node"}``."""
        query = {"name": name or None, "node": node or None}
        return dict(self.request("POST", "/containers/create", query=query, body=body))

    def images(self) -> list[dict[str, Any]]:
        """Docker image summaries of every connected node, each with its ``Node``."""
        return list(self.get("/images/json") or [])

    def engine(
        self, node_id: str, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """One call of a node's Docker Engine API (``path`` as Docker's, ``/containers/…``), read whole,
        without a read timeout; the decoded JSON answer, or None when it is empty."""
        with self.open_stream(method, engine_path(node_id, path), query=query, body=body) as resp:
            return resp.json()

    def engine_stream(
        self,
        node_id: str,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        data: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
    ) -> AbstractContextManager[Response]:
        """:meth:`open_stream` on a node's Docker Engine API."""
        return self.open_stream(
            method, engine_path(node_id, path), query=query, body=body, data=data, headers=headers
        )


class Response:
    """A streamed response: its chunks as they arrive, or its JSON lines. A broken connection while
    reading is :class:`ManagerUnreachable`."""

    def __init__(self, resp: http.client.HTTPResponse, address: str) -> None:
        self.raw = resp
        self.status = resp.status
        self.address = address

    @property
    def content_type(self) -> str:
        return (self.raw.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The body as it arrives (each chunk as soon as some bytes are there)."""
        while True:
            try:
                chunk = self.raw.read1(size)
            except (OSError, http.client.HTTPException) as e:
                raise ManagerUnreachable(self.address, f"the stream broke: {_reason(e)}") from None
            if not chunk:
                return
            yield chunk

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def json(self) -> Any:
        """The whole body as JSON (None when empty)."""
        data = self.read()
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise APIError(self.status, f"not a JSON answer: {data[:100]!r}") from None

    def json_lines(self) -> Iterator[Any]:
        """Each JSON value of a JSON-lines body (Docker's progress streams) as its line arrives."""
        buffer = b""
        for chunk in self.chunks():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield _json_line(line, self.status)
        if buffer.strip():
            yield _json_line(buffer, self.status)


def _json_line(line: bytes, status: int) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise APIError(status, f"not a JSON line: {line[:100]!r}") from None


def _read_all(resp: http.client.HTTPResponse, address: object) -> bytes:
    try:
        return resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise ManagerUnreachable(str(address), _reason(e)) from None


def _api_error(status: int, data: bytes, method: str, path: str) -> APIError:
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    if not message:
        message = data.decode(errors="replace").strip() or http.client.responses.get(status, "error")
    return APIError(status, str(message), method, path)


def _remaining(f: BinaryIO) -> int:
    """How many bytes are left to read in a seekable file."""
    here = f.tell()
    end = f.seek(0, 2)
    f.seek(here)
    return end - here


def engine_path(node_id: str, path: str) -> str:
    """The manager's path to ``path`` of a node's Docker Engine API."""
    return f"/nodes/{_q(node_id)}/engine{path}"


def _q(ref: str) -> str:
    return quote(ref, safe="")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


R = TypeVar("R")


def retry_on_conflict(read: Callable[[], T], write: Callable[[T], R], attempts: int = 5) -> R:
    """Read an object and write a change of it, again from a fresh read if it changed in between (409).

    The manager's own loops write status into the same objects (a service's allocation, a node's state),
    so a conditional write can lose a race that has nothing to do with the user's change.
    """
    for attempt in range(attempts):
        obj = read()
        try:
            return write(obj)
        except APIError as e:
            if e.status != 409 or "out of sequence" not in e.message or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
