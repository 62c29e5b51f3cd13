"""The KV store of a local cluster: a single-member etcd or a standalone ZooKeeper on ``host0``'s loopback.

Either one is a plain child process started inside ``host0``'s namespace (so its port exists nowhere else),
keeps its data under the cluster's directory and is stopped by its PID with everything else the cluster
started. ZooKeeper is Debian's ``zookeeper`` package run without its service: ``QuorumPeerMain`` with a
generated configuration that allows the short sessions the managers' leases ask for (tick 200 ms), turns
the admin HTTP server off (it would want port 8080) and lets the four-letter words through that say when
it serves.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: The stores a local cluster can run; the first is the default.
STORES = ("etcd", "zookeeper")
ETCD_PORT = 2379
ZK_PORT = 2181
JAVA_BINARY = os.environ.get("SHOAL_JAVA", "/usr/bin/java")
#: zookeeper.jar's manifest names its own dependencies; only a logging binding has to be added.
ZK_CLASSPATH = os.environ.get(
    "SHOAL_ZK_CLASSPATH", "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"
)
#: ZooKeeper allows sessions from 2 to 20 ticks by default; 200 ms ticks let a 2 s election lease through.
ZK_TICK_MS = 200


@dataclass(frozen=True)
class LocalStore:
    """One store of a local cluster: ``kind`` (one of :data:`STORES`) keeping its data under ``base``."""

    kind: str
    base: Path

    def __post_init__(self) -> None:
        if self.kind not in STORES:
            raise ValueError(f"unknown store {self.kind!r} (choose from {', '.join(STORES)})")

    @property
    def url(self) -> str:
        """What the manager's ``--store`` says (reachable inside ``host0`` only)."""
        if self.kind == "zookeeper":
            return f"zk://127.0.0.1:{ZK_PORT}/shoal"
        return f"etcd://127.0.0.1:{ETCD_PORT}/shoal"

    @property
    def log_name(self) -> str:
        return f"{self.kind}.log"

    def argv(self) -> list[str]:
        """The store's command line (its configuration written first, for ZooKeeper)."""
        if self.kind == "zookeeper":
            return self._zookeeper()
        data = self.base / "etcd"
        return [
            "etcd", "--name", "local", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "local=http://127.0.0.1:2380",
        ]  # fmt: skip

    def _zookeeper(self) -> list[str]:
        root = self.base / "zookeeper"
        (root / "data").mkdir(parents=True, exist_ok=True)
        config = root / "zoo.cfg"
        config.write_text(
            f"tickTime={ZK_TICK_MS}\n"
            f"dataDir={root / 'data'}\n"
            f"clientPort={ZK_PORT}\n"
            "clientPortAddress=127.0.0.1\n"
            f"minSessionTimeout={2 * ZK_TICK_MS}\n"
            "maxSessionTimeout=30000\n"
            "maxClientCnxns=0\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr\n"
        )
        return [
            JAVA_BINARY, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp", ZK_CLASSPATH, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(config),
        ]  # fmt: skip

    def answers(self) -> bool:
        """Whether the store serves clients now (call it inside ``host0``'s namespace)."""
        try:
            if self.kind == "zookeeper":
                # "imok" only says the process is up; "srvr" also says it serves (its data is loaded).
                return _four_letter("ruok") == "imok" and "Mode:" in _four_letter("srvr")
            with urllib.request.urlopen(f"http://127.0.0.1:{ETCD_PORT}/health", timeout=1) as r:
                return b'"health":"true"' in r.read().replace(b" ", b"")
        except (OSError, urllib.error.URLError):
            return False


def _four_letter(word: str) -> str:
    with socket.create_connection(("127.0.0.1", ZK_PORT), timeout=1) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
