"""The OpenAPI 3 document of the manager's API, served at ``/openapi.json``.

Paths come from the route table and bodies from the object model's type hints (api.schema), so the
document describes exactly what the server accepts.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from api import Cluster, Network, Node, Secret, Service, Task
from api.join import (
    CA_PATH,
    CLIENT_CERT_PATH,
    JOIN_PATH,
    RENEW_PATH,
    ROTATE_TOKEN_PATH,
    CertificateReply,
    ClientCertificateRequest,
    JoinRequest,
    RenewRequest,
)
from api.objects import NetworkSpec, NodeSpec, SecretSpec, ServiceSpec, Volume, VolumeSpec
from api.schema import json_schema
from manager.api.app import json_response

#: (method, path) → (summary, request body type, response type or None, response is a list)
OPERATIONS: dict[tuple[str, str], tuple[str, Any, Any, bool]] = {
    ("post", "/services/create"): ("Create a service", ServiceSpec, None, False),
    ("get", "/services"): ("List services", None, Service, True),
    ("get", "/services/{ref}"): ("Inspect a service (id, name or id prefix)", None, Service, False),
    ("post", "/services/{ref}/update"): ("Update a service at ?version=", ServiceSpec, None, False),
    ("post", "/services/{ref}/rollback"): ("Roll a service back to its previous spec", None, None, False),
    ("delete", "/services/{ref}"): ("Remove a service", None, None, False),
    ("get", "/tasks"): ("List tasks (?service=, ?node=, ?desired-state=)", None, Task, True),
    ("get", "/tasks/{ref}"): ("Inspect a task", None, Task, False),
    ("get", "/services/{ref}/logs"): ("Stream the logs of a service's tasks (NDJSON)", None, None, False),
    ("get", "/tasks/{ref}/logs"): ("Stream the logs of a task (NDJSON)", None, None, False),
    ("get", "/nodes"): ("List nodes", None, Node, True),
    ("get", "/nodes/{ref}"): ("Inspect a node (id, hostname or id prefix)", None, Node, False),
    ("post", "/nodes/{ref}/update"): ("Update a node's spec at ?version=", NodeSpec, None, False),
    ("delete", "/nodes/{ref}"): ("Remove a node (?force=1 if it is not down)", None, None, False),
    ("post", "/networks/create"): ("Create a network", NetworkSpec, None, False),
    ("get", "/networks"): ("List networks", None, Network, True),
    ("get", "/networks/{ref}"): ("Inspect a network", None, Network, False),
    ("delete", "/networks/{ref}"): ("Remove a network", None, None, False),
    ("post", "/volumes/create"): ("Create a volume", VolumeSpec, None, False),
    ("get", "/volumes"): ("List volumes", None, Volume, True),
    ("get", "/volumes/{ref}"): ("Inspect a volume", None, Volume, False),
    ("delete", "/volumes/{ref}"): ("Remove a volume", None, None, False),
    ("post", "/secrets/create"): ("Create a secret (data is never returned)", SecretSpec, None, False),
    ("get", "/secrets"): ("List secrets", None, Secret, True),
    ("get", "/secrets/{ref}"): ("Inspect a secret", None, Secret, False),
    ("delete", "/secrets/{ref}"): ("Remove a secret", None, None, False),
    ("get", "/swarm"): ("Inspect the cluster", None, Cluster, False),
    ("post", ROTATE_TOKEN_PATH): ("Rotate the join token of ?role=worker|manager", None, None, False),
    ("get", CA_PATH): (
        "The cluster's root CA certificate (PEM; no client certificate needed)",
        None,
        None,
        False,
    ),
    ("post", JOIN_PATH): ("Join with a token: a node certificate", JoinRequest, CertificateReply, False),
    ("post", RENEW_PATH): ("Renew the calling node's certificate", RenewRequest, CertificateReply, False),
    ("post", CLIENT_CERT_PATH): (
        "An administrator's client certificate (unix socket or managers only)",
        ClientCertificateRequest,
        CertificateReply,
        False,
    ),
    ("get", "/containers/json"): (
        "Every connected node's containers (Docker's list, ?all=, ?filters=), each with its Node",
        None,
        None,
        False,
    ),
    ("post", "/containers/create"): (
        "Create a one-off container (Docker's create body; constraint:/affinity: in Env place it)",
        None,
        None,
        False,
    ),
    ("get", "/containers/{ref}/json"): (
        "Inspect a container on any node (id, name, NODE/NAME)",
        None,
        None,
        False,
    ),
    ("get", "/images/json"): ("Every connected node's images, each with its Node", None, None, False),
    **{
        (method, "/nodes/{ref}/engine/{path}"): (
            f"{method.upper()} on the node's Docker Engine API (relayed through its agent's session)",
            None,
            None,
            False,
        )
        for method in ("get", "post", "put", "delete")
    },
    ("get", "/events"): ("Stream object changes (server-sent events)", None, None, False),
    ("get", "/_ping"): ("Liveness", None, None, False),
    ("get", "/version"): ("Server version", None, None, False),
}


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": kind}, "description": description}


#: The query of the log endpoints (manager/api/logs.py), Docker's.
_LOG_PARAMS = [
    _query("follow", "boolean", "Keep streaming new lines (a service: also of tasks started later)"),
    _query("tail", "string", "Lines per task from the end: a number or 'all'"),
    _query("since", "string", "Only lines since this time: UNIX seconds or RFC 3339"),
    _query("stdout", "boolean", "Lines of stdout (both streams when neither is given)"),
    _query("stderr", "boolean", "Lines of stderr"),
    _query("timestamps", "boolean", "Accepted for Docker's clients; every line carries its time"),
    _query("details", "boolean", "Accepted for Docker's clients; there are no extra attributes"),
    _query("forwarded", "boolean", "Set by a manager relaying the request: answer from this one's sessions"),
]
_LOG_LINE: dict[str, Any] = {
    "description": "One object per line: a line of output, or an error for logs that cannot be read",
    "type": "object",
    "properties": {
        "task": {"type": "string"},
        "node": {"type": "string"},
        "stream": {"type": "string", "enum": ["stdout", "stderr"]},
        "time": {"type": "string", "format": "date-time"},
        "text": {"type": "string"},
        "error": {"type": "string"},
    },
}


@functools.cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    schemas: dict[str, Any] = {}
    schemas["Error"] = {
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
    }
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), (summary, body, result, many) in OPERATIONS.items():
        op: dict[str, Any] = {"summary": summary, "responses": {}}
        params = []
        if "{ref}" in path:
            params.append({"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}})
        if "{path}" in path:
            params.append({"name": "path", "in": "path", "required": True, "schema": {"type": "string"}})
        if path.endswith("/update"):
            params.append({"name": "version", "in": "query", "required": True, "schema": {"type": "integer"}})
        if path == ROTATE_TOKEN_PATH:
            role = {"type": "string", "enum": ["worker", "manager"]}
            params.append({"name": "role", "in": "query", "required": True, "schema": role})
        if path.endswith("/logs"):
            params += _LOG_PARAMS
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": json_schema(body, schemas)}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if path.endswith("/logs"):
            ok["content"] = {"application/x-ndjson": {"schema": _LOG_LINE}}
        if result is not None:
            item = json_schema(result, schemas)
            schema = {"type": "array", "items": item} if many else item
            ok["content"] = {"application/json": {"schema": schema}}
        status = "201" if path.endswith("/create") else "204" if method == "delete" else "200"
        op["responses"][status] = ok
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for code, what in (("400", "Bad request"), ("404", "Not found"), ("409", "Conflict")):
            op["responses"][code] = {"description": what, **error}
        op["responses"]["503"] = {"description": "Store unavailable", **error}
        for code, what in (("401", "No valid client certificate"), ("403", "Not allowed for this caller")):
            op["responses"][code] = {"description": what, **error}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Shoal manager API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


async def handler(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return json_response(document())
