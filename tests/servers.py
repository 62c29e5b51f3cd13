"""Real etcd and ZooKeeper servers for tests, on free loopback ports in temporary directories.

Each server is one child process that this module started; it is stopped by its PID (SIGTERM, then SIGKILL)
and never by name, so a test run does not disturb other processes on the machine. ``restart()`` brings a
server back on the same ports with the same data directory, which is what "the store process crashed and
came back" looks like to a client.

Usage::

    with EtcdServer(tmp_path) as etcd:
        store = await open_store(etcd.url_with_prefix("my-test"))
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

ETCD_BINARY = os.environ.get("SHOAL_TEST_ETCD", "/usr/bin/etcd")
JAVA_BINARY = os.environ.get("SHOAL_TEST_JAVA", "/usr/bin/java")
# zookeeper.jar's manifest names its own dependencies; only a logging binding has to be added.
ZK_CLASSPATH = os.environ.get(
    "SHOAL_TEST_ZK_CLASSPATH", "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"
)
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A loopback port with no listener, for "store unreachable" tests (connections are refused)."""
    return free_port()


def unique_prefix(label: str = "test") -> str:
    """A fresh key prefix so tests sharing one server never see each other's keys."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[:40].strip("-") or "test"
    return f"{safe}-{secrets.token_hex(4)}"


class ServerError(RuntimeError):
    """A test server did not start; the message carries the tail of its log."""


class _Server:
    """A child process with a log file, a data directory and start/stop/kill/restart."""

    kind = "server"
    scheme = "?"
    ready_timeout = 30.0

    def __init__(self, base_dir: Path | str | None = None) -> None:
        self._own_dir = base_dir is None
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix=f"shoal-{self.kind}-")
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / f"{self.kind}.log"
        self.port = free_port()
        self.prefix = unique_prefix(self.kind)
        self.proc: subprocess.Popen[bytes] | None = None

    # --- what subclasses provide ---------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration files before the first start."""

    # --- URLs ------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``host:port`` of the client port."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The store URL of this server with this server's default test prefix."""
        return self.url_with_prefix(self.prefix)

    def url_with_prefix(self, prefix: str) -> str:
        """The store URL of this server under ``prefix``."""
        return f"{self.scheme}://{self.endpoint}/{prefix}"

    # --- lifecycle -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the process and wait until it serves clients."""
        if self.running:
            return
        self.launch()
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def launch(self) -> None:
        """Start the process without waiting for it to serve (members of a cluster start together)."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            self.proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                # Its own process group: a Ctrl-C on the test run does not reach it before we stop it.
                start_new_session=True,
            )
        finally:
            log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerError(f"{self.kind} exited with {code} while starting:\n{self.log_tail()}")
            if self._is_ready():
                return
            time.sleep(0.05)
        raise ServerError(f"{self.kind} not ready after {self.ready_timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), killing it if it does not exit in ``timeout`` seconds."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        self.proc = None

    def restart(self, *, kill: bool = True) -> None:
        """Stop (by SIGKILL unless ``kill=False``) and start again on the same ports and data directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        self._wait_port_free()
        self.start()

    def _wait_port_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((LOOPBACK, self.port))
                    return
                except OSError:
                    time.sleep(0.05)

    def cleanup(self) -> None:
        """Stop the process and remove the directory if this object created it."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint} pid={self.pid}>"


class EtcdServer(_Server):
    """A single-member etcd with short heartbeat/election timings so it is ready in well under a second."""

    kind = "etcd"
    scheme = "etcd"

    def __init__(self, base_dir: Path | str | None = None) -> None:
        super().__init__(base_dir)
        self.peer_port = free_port()
        self.name = "shoal-test"

    def _command(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        return [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"shoal-test-{self.port}",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--snapshot-count", "10000",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return str(body.get("health")) == "true"


class EtcdMember(EtcdServer):
    """One member of an :class:`EtcdCluster`: etcd's default timings (a member of three on a busy machine
    must not call elections over a slow heartbeat)."""

    def __init__(self, base_dir: Path, name: str) -> None:
        super().__init__(base_dir)
        self.name = name
        self.initial_cluster = ""

    def _command(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        return [
            ETCD_BINARY,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "shoal-test-cluster",
            "--snapshot-count", "10000",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def member_status(self) -> dict[str, str]:
        """This member's view (``/v3/maintenance/status``): its ``member_id`` and its ``leader``."""
        url = f"http://{self.endpoint}/v3/maintenance/status"
        req = urllib.request.Request(url, data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=2) as resp:
            body = json.loads(resp.read())
        return {"member_id": str(body["header"]["member_id"]), "leader": str(body.get("leader", ""))}


class EtcdCluster:
    """Three (or ``size``) etcd members on loopback, started together; each one can be stopped, killed and
    restarted on its ports and data directory, as a machine of the cluster going down and coming back.

    Usage::

        with EtcdCluster(tmp_path) as etcd:
            url = etcd.url_with_prefix("test")   # etcd://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/test
            etcd.members[0].stop(); ...; etcd.members[0].start()
    """

    def __init__(self, base_dir: Path | str | None = None, size: int = 3) -> None:
        self._own_dir = base_dir is None
        self.dir = Path(base_dir if base_dir is not None else tempfile.mkdtemp(prefix="shoal-etcd-cluster-"))
        self.members = [EtcdMember(self.dir / f"member{i}", f"member{i}") for i in range(size)]
        initial = ",".join(f"{m.name}=http://{LOOPBACK}:{m.peer_port}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> str:
        """``host:port,host:port,…`` of every member's client port."""
        return ",".join(m.endpoint for m in self.members)

    def url_with_prefix(self, prefix: str) -> str:
        """The store URL naming every member, under ``prefix``."""
        return f"etcd://{self.endpoints}/{prefix}"

    def start(self) -> None:
        """Start every member and wait until each serves (which needs a quorum, hence all at once)."""
        try:
            for m in self.members:
                m.launch()
            for m in self.members:
                m._wait_ready()
        except BaseException:
            self.cleanup()
            raise

    def leader(self) -> EtcdMember:
        """The member that leads the raft group now (asked of any running member)."""
        for m in self.members:
            if not m.running:
                continue
            with contextlib.suppress(OSError, KeyError, ValueError):
                status = m.member_status()
                for other in self.members:
                    if other.running and other.member_status()["member_id"] == status["leader"]:
                        return other
        raise ServerError("no etcd member answers with a leader")

    def cleanup(self) -> None:
        """Stop every member (by PID) and remove the directory if this object created it."""
        try:
            for m in self.members:
                m.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class ZooKeeperServer(_Server):
    """A standalone ZooKeeper (QuorumPeerMain with a generated zoo.cfg).

    ``tickTime`` is 200 ms so session timeouts from 0.4 s to 30 s are allowed: tests use 2-4 s sessions to
    see ephemeral nodes vanish quickly. The admin HTTP server is off (it would need another port).
    """

    kind = "zookeeper"
    scheme = "zk"
    tick_ms = 200

    @property
    def config_path(self) -> Path:
        return self.dir / "zoo.cfg"

    def _prepare(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"tickTime={self.tick_ms}",
                    f"dataDir={self.data_dir}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={LOOPBACK}",
                    f"minSessionTimeout={2 * self.tick_ms}",
                    "maxSessionTimeout=30000",
                    "maxClientCnxns=0",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,stat,mntr,cons",
                    # No fsync: tests kill the process, not the machine, and the page cache survives that.
                    "forceSync=no",
                    "preAllocSize=4096",
                    "snapCount=100000",
                    "",
                ]
            )
        )

    def _command(self) -> list[str]:
        return [
            JAVA_BINARY,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            ZK_CLASSPATH,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(self.config_path),
        ]

    def four_letter(self, word: str, timeout: float = 1.0) -> str:
        """Send a four-letter command (``ruok``, ``srvr``…) and return the reply."""
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _is_ready(self) -> bool:
        try:
            # "imok" only says the process is up; "srvr" also says it serves requests (data loaded).
            return self.four_letter("ruok") == "imok" and "Mode:" in self.four_letter("srvr")
        except OSError:
            return False
