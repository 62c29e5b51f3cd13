"""Fixtures shared by every test folder: real etcd and ZooKeeper servers started once per session.

Tests that stop or restart a server must use their own (``EtcdServer(tmp_path)`` as a context manager, or
the function-scoped ``fresh_etcd_server`` / ``fresh_zk_server`` fixtures) so they never disturb the
session-wide ones. Tests keep apart by using a unique key prefix (``servers.unique_prefix``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import EtcdServer, ZooKeeperServer


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole session; stopped (by PID) at the end even if tests failed."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """One standalone ZooKeeper for the whole session."""
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def fresh_etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own, for tests that kill or restart it."""
    server = EtcdServer(tmp_path / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def fresh_zk_server(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper of this test's own, for tests that kill or restart it."""
    server = ZooKeeperServer(tmp_path / "zookeeper")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
