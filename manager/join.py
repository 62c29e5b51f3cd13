"""Membership endpoints: the CA certificate, joining with a token, certificate renewal, administrators'
client certificates and token rotation (api/join.py has the bodies, docs/security.md the story).

``POST /join`` is the only place a join token is ever checked. A node that presents a valid one gets a
Node object (created before the certificate leaves, so a refused or failed join leaves nothing behind:
the certificate is returned only once the node exists) and a certificate naming the new node id and the
role its token grants. Everything after that — the agent session, renewals — is authenticated by the
certificate; the token is never sent again.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web

from api import Cluster, Node, from_plain, new_id
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
from api.objects import JoinTokens, Meta, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus
from kvstore_adapters import KVError
from manager.api.app import BadRequest, json_response, read_json
from manager.ca import ROLE_ADMIN, CertificateError, cert_role
from manager.errors import Forbidden, InvalidSpec, Unauthenticated
from manager.pki import CLUSTER_ID, ClusterPKI
from manager.tls import caller_of

log = logging.getLogger(__name__)

PKI = web.AppKey("pki", ClusterPKI)


def role_for_token(token: str, tokens: JoinTokens) -> NodeRole | None:
    """The role a join token grants, or None if it is neither of the cluster's tokens."""
    if not token:
        return None
    # Constant-time comparisons: the token is a credential.
    if tokens.manager and hmac.compare_digest(token.encode(), tokens.manager.encode()):
        return NodeRole.MANAGER
    if tokens.worker and hmac.compare_digest(token.encode(), tokens.worker.encode()):
        return NodeRole.WORKER
    return None


def mount(app: web.Application, pki: ClusterPKI) -> None:
    """Serve the membership endpoints on ``app``."""
    app[PKI] = pki
    app.router.add_get(CA_PATH, ca_certificate)
    app.router.add_post(JOIN_PATH, join)
    app.router.add_post(RENEW_PATH, renew)
    app.router.add_post(CLIENT_CERT_PATH, client_certificate)
    app.router.add_post(ROTATE_TOKEN_PATH, rotate_token)


def _issue(pki: ClusterPKI, subject: str, role: str, public_key: str) -> CertificateReply:
    try:
        return pki.issue(subject, role, public_key)
    except CertificateError as e:
        raise InvalidSpec("public_key", str(e)) from None


async def ca_certificate(request: web.Request) -> web.Response:
    """``GET /ca``: the root CA certificate, PEM (public; a joining node checks it against its token)."""
    return web.Response(text=request.app[PKI].ca.cert_pem.decode(), content_type="application/x-pem-file")


async def join(request: web.Request) -> web.Response:
    """``POST /join``: a token and a public key in, a node certificate out."""
    pki = request.app[PKI]
    body = from_plain(JoinRequest, await read_json(request))
    peer = request.remote or ""
    who = f"{body.hostname or '?'} from {peer}"
    role = role_for_token(body.token, pki.tokens())
    if role is None:
        log.warning("refused a join of %s: invalid join token", who)
        raise Forbidden("invalid join token (a wrong token, or one that has been rotated)")
    store = pki.store
    node = Node(
        meta=Meta(id=new_id()),
        spec=NodeSpec(role=role),
        status=NodeStatus(
            state=NodeState.UNKNOWN,
            message="joined; waiting for its first session",
            addr=body.addr or peer,
            description=NodeDescription(hostname=body.hostname),
        ),
    )
    reply = _issue(pki, node.meta.id, cert_role(role), body.public_key)  # before the node exists
    try:
        # Nothing may fail between this write and the reply (the session looks the node up in the store
        # itself when this manager's cache has not caught up yet).
        node = await store.create(node)
    except KVError as e:
        log.warning("join of %s failed: the store is unavailable: %s", who, e)
        raise
    log.info("node %s (%s) joined as %s", node.meta.id, who, role.value)
    return json_response(reply)


async def renew(request: web.Request) -> web.Response:
    """``POST /node/renew``: a node's new certificate, over its current one (the role is the node's
    current role, so a promotion or demotion takes effect at the next renewal)."""
    pki = request.app[PKI]
    caller = caller_of(request)
    identity = caller.node
    if identity is None:
        raise Unauthenticated("renewal needs the node's current certificate")
    body = from_plain(RenewRequest, await read_json(request))
    store = pki.store
    node = store.get(Node, identity.node_id) or await store.fetch(Node, identity.node_id)
    if node is None:
        log.warning("refused renewal for %s: the node has been removed", caller)
        raise Forbidden(f"node {identity.node_id} has been removed from the cluster")
    reply = _issue(pki, node.meta.id, cert_role(node.spec.role), body.public_key)
    log.info("renewed the certificate of node %s", node.meta.id)
    return json_response(reply)


async def client_certificate(request: web.Request) -> web.Response:
    """``POST /client-certificate``: an administrator's certificate for ``swarmctl`` over TCP. Only root
    on a manager host (the unix socket) or a manager may ask (the authorizer already refused others)."""
    pki = request.app[PKI]
    body = from_plain(ClientCertificateRequest, await read_json(request))
    name = f"admin-{new_id()[:12]}"
    reply = _issue(pki, name, ROLE_ADMIN, body.public_key)
    log.info("issued client certificate %s to %s", name, caller_of(request))
    return json_response(reply)


async def rotate_token(request: web.Request) -> web.Response:
    """``POST /swarm/join-tokens/rotate?role=worker|manager``: a new token for the role; nodes that
    joined keep their certificates, the old token admits nobody."""
    pki = request.app[PKI]
    raw = request.query.get("role", "")
    try:
        role = NodeRole(raw)
    except ValueError:
        raise BadRequest(f"role must be worker or manager, not {raw!r}") from None
    token = await pki.rotate_token(role)
    cluster = pki.store.must_get(Cluster, CLUSTER_ID)
    return json_response({"role": role.value, "token": token, "version": cluster.meta.version})
