"""Every malformed stack file of the loader's table, through the real command against a real manager:
one error per problem, exit code 1, and nothing created. One lifecycle also runs on a real etcd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.swarmctl.conftest import Cluster, column
from tests.servers import EtcdServer, unique_prefix
from tests.unit.swarmctl.test_stack_loader import MALFORMED


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_stack_files_create_nothing(
    cluster: Cluster, tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(text)
    r = cluster.run("stack", "deploy", "-c", str(path), "bad")
    assert r.code == 1 and r.out == ""
    lines = r.err.replace(f"{tmp_path}/", "").splitlines()
    assert lines[0].startswith("Error: ") and not any(line.startswith("Warning") for line in lines)
    assert any(expected in line for line in lines), r.err
    for kind in ("service", "network", "secret", "volume"):
        assert cluster.ok(kind, "ls", "-q").out == "", kind


@pytest.fixture
def etcd_cluster(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, store_url=etcd_server.url_with_prefix(unique_prefix("swarmctl")))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_a_service_lifecycle_on_etcd(etcd_cluster: Cluster) -> None:
    c = etcd_cluster
    r = c.ok("service", "create", "--name", "web", "--replicas", "3", "busybox")
    assert "web: 3/3 running, converged" in r.err
    c.ok("service", "update", "--image", "busybox:2", "--update-parallelism", "0", "web")
    c.ok("service", "scale", "web=1")
    assert column(c.ok("service", "ls"), "REPLICAS") == ["1/1"]
    assert c.ok("service", "rm", "web").out == "web\n"
    assert c.ok("service", "ls", "-q").out == ""
