"""The cluster object and its tokens as the PKI keeps them: pinning the CA, rotation."""

from __future__ import annotations

from api import Cluster
from api.join import JoinToken
from api.objects import ClusterStatus, JoinTokens, NodeRole
from manager.ca import RootCA
from manager.pki import new_tokens, rotated, with_ca


def test_an_older_cluster_gets_its_ca_and_pinning_tokens() -> None:
    ca = RootCA.create("c")
    old = Cluster(status=ClusterStatus(join_tokens=JoinTokens(worker="SWMTKN-1-x", manager="SWMTKN-1-y")))
    fixed = with_ca(old, ca)
    assert fixed.status.root_ca_cert == ca.cert_pem.decode()
    for token in (fixed.status.join_tokens.worker, fixed.status.join_tokens.manager):
        assert JoinToken.parse(token).digest == ca.digest
    assert with_ca(fixed, ca) is fixed, "nothing to change: no write"


def test_rotation_replaces_one_roles_token_only() -> None:
    ca = RootCA.create("c")
    cluster = Cluster(status=ClusterStatus(join_tokens=new_tokens(ca), root_ca_cert=ca.cert_pem.decode()))
    worker = rotated(cluster, NodeRole.WORKER, ca)
    assert worker.status.join_tokens.worker != cluster.status.join_tokens.worker
    assert worker.status.join_tokens.manager == cluster.status.join_tokens.manager
    manager = rotated(cluster, NodeRole.MANAGER, ca)
    assert manager.status.join_tokens.manager != cluster.status.join_tokens.manager
    assert manager.status.join_tokens.worker == cluster.status.join_tokens.worker
