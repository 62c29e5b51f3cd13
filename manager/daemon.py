"""One manager: the store and its cache, the API, agent sessions, and the leader's loop while it leads.

Every manager serves the API and agent sessions; the one that wins the election also runs the
:class:`~manager.leader.Leader` loop. When it loses the leadership it stops the loop at once and campaigns
again, so at most one manager ever runs orchestrators against the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from api import Cluster, new_id
from kvstore_adapters import KVStore, open_store
from kvstore_adapters.election import Election
from manager import join
from manager.api.app import make_app
from manager.leader import Leader
from manager.nodes import run_node_states
from manager.pki import CLUSTER_ID, ClusterPKI
from manager.secretbox import SecretBox
from manager.store import ObjectStore
from manager.tls import TLSSite, authorizer

log = logging.getLogger(__name__)

LEADER_KEY = "leader"
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def _host(addr: str) -> str:
    host = addr.rpartition(":")[0] if ":" in addr else addr
    return host.strip("[]")


def certificate_names(config: ManagerConfig) -> list[str]:
    """The names and addresses this manager's certificate is valid for: the listen and advertise hosts,
    this host's name, loopback, and any given with ``--tls-san``."""
    names = [_host(config.listen), _host(config.advertise), *config.cert_names]
    names += [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return [n for n in dict.fromkeys(names) if n not in _WILDCARDS]


@dataclass
class ManagerConfig:
    """How to run one manager."""

    store_url: str
    #: TCP address for the API and agent sessions ("127.0.0.1:2377"); "" for none.
    listen: str = "127.0.0.1:2377"
    #: Unix socket for local clients; "" for none.
    socket: str = ""
    #: host:port agents and other managers reach this manager at ("" : the listen address if specific).
    advertise: str = ""
    manager_id: str = field(default_factory=new_id)
    #: Election lease TTL in seconds: a dead leader is replaced within this (plus up to a second, as etcd
    #: rounds leases to whole seconds). 2 s keeps failover under 3 s; a leader that cannot renew its lease
    #: for 2 s steps down, which only costs a new election.
    election_ttl: float = 2.0
    #: Where this manager keeps its own files (the secrets key, its certificate), readable by root only.
    state_dir: str = "/var/lib/shoal/manager"
    #: Further host names or IP addresses for this manager's certificate (clients check the host they dial).
    cert_names: tuple[str, ...] = ()


class Manager:
    """A running manager; ``await start()`` then ``await stop()``."""

    def __init__(self, config: ManagerConfig) -> None:
        if not config.advertise and config.listen and not config.listen.startswith(("0.0.0.0:", ":")):
            config.advertise = config.listen
        self.config = config
        self.kv: KVStore | None = None
        self.store: ObjectStore | None = None
        self.election: Election | None = None
        self.leader: Leader | None = None
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._campaign: asyncio.Task[None] | None = None
        #: The cluster CA and this manager's certificate (after start()).
        self.pki: ClusterPKI | None = None
        #: Set while this manager leads.
        self.leading = asyncio.Event()

    async def start(self) -> None:
        """Connect to the store, load the cluster, serve, and start campaigning."""
        self.kv = await open_store(self.config.store_url)
        box = SecretBox.from_file(Path(self.config.state_dir) / "secrets.key")
        self.store = ObjectStore(self.kv, box)
        await self.store.start()
        state_dir = Path(self.config.state_dir)
        self.pki = await ClusterPKI.setup(
            self.store, state_dir, self.config.manager_id, certificate_names(self.config)
        )
        self.pki.start()
        self.app = make_app(self.store)
        self.app.middlewares.append(authorizer(self.pki))
        join.mount(self.app, self.pki)
        self._mount_dispatcher(self.app)
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        if self.config.listen:
            host, _, port = self.config.listen.rpartition(":")
            assert self.pki.server_context is not None
            site = TLSSite(self._runner, host.strip("[]") or "", int(port), self.pki.server_context)
            await site.start()
        if self.config.socket:
            Path(self.config.socket).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                Path(self.config.socket).unlink()
            await web.UnixSite(self._runner, self.config.socket).start()
            Path(self.config.socket).chmod(0o600)  # root only, like docker.sock
        self.election = Election(self.kv, LEADER_KEY, self.config.manager_id, ttl=self.config.election_ttl)
        self._campaign = asyncio.create_task(self._lead_when_elected(), name="manager-campaign")

    def _mount_dispatcher(self, app: web.Application) -> None:
        try:
            from manager.dispatcher import Dispatcher
        except ImportError:  # agent sessions are optional for API-only managers
            return
        assert self.store is not None
        Dispatcher(self.store, manager_id=self.config.manager_id, advertise_addr=self.config.advertise).mount(
            app
        )

    async def _lead_when_elected(self) -> None:
        assert self.election is not None and self.store is not None
        while True:
            await self.election.campaign()
            # Decide nothing on a view older than the moment of winning: the previous leader's last writes
            # (tasks it created) must be in the cache, or they would be created again.
            await self.store.wait_for(self.election.revision)
            log.info("manager %s is the leader", self.config.manager_id)
            self.leading.set()
            self.leader = Leader(self.store)
            run = asyncio.create_task(self.leader.run(), name="leader-loop")
            nodes = asyncio.create_task(run_node_states(self.store), name="leader-node-states")
            lost = asyncio.create_task(self.election.lost.wait(), name="leader-lost")
            try:
                done, _ = await asyncio.wait({run, nodes, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also when this task is cancelled (stop()): the leader's loops must never outlive it.
                for t in (run, nodes, lost):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):  # inspected below
                        await t
                self.leading.clear()
                self.leader = None
            failed = [
                t for t in (run, nodes) if t in done and not t.cancelled() and t.exception() is not None
            ]
            if failed:
                log.error("a leader loop failed: %r; resigning", failed[0].exception())
                await self.election.resign()
            else:
                log.warning("manager %s lost the leadership", self.config.manager_id)

    async def stop(self) -> None:
        """Stop leading (handing over at once), serving and following the store."""
        if self._campaign is not None:
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
        if self.election is not None:
            await self.election.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.pki is not None:
            await self.pki.stop()
        if self.store is not None:
            await self.store.stop()
        if self.kv is not None:
            await self.kv.close()

    def cluster(self) -> Any:
        """The cluster object (tokens, settings)."""
        assert self.store is not None
        return self.store.must_get(Cluster, CLUSTER_ID)
