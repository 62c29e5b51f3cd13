"""What the leading manager runs: orchestrators, allocator and scheduler, as one debounced loop.

The loop follows the store's changes and marks what they touch as dirty (a service, or everything when
nodes change). Each *tick* then, in memory and in this order:

1. reconciles every dirty service (replicated or global orchestrator, rolling update planner) into a plan;
   tasks of removed services are told to stop and deleted once they have;
2. allocates what is new: network VNIs and subnets, service ports and VIPs, task addresses (NEW → PENDING);
3. schedules every PENDING task (PENDING → ASSIGNED with a node, or stays PENDING with the reason);
4. writes it all in conditional batches, and waits until the cache shows the writes, so the next tick
   never acts on a stale view (that is what keeps tasks from being created twice).

Doing the three steps in one tick means a new task is written once, already ASSIGNED, instead of three
times; that is where most of the create-to-assigned latency would otherwise go. A write that loses a race
(Conflict) only marks its service dirty again: the next tick decides afresh from the new state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import replace
from datetime import datetime
from typing import Any

from api import Cluster, Network, Node, Service, Task, TaskState, new_id, utcnow
from api.objects import Annotations, Endpoint, Meta, NetworkSpec, ServiceMode, UpdateState
from manager.allocator import AllocationError, Allocator, ingress_network, publishes_ingress
from manager.errors import AlreadyExists, Conflict
from manager.orchestrator.global_ import reconcile_global
from manager.orchestrator.plan import Plan
from manager.orchestrator.replicated import reconcile_replicated
from manager.orchestrator.update import plan_update
from manager.scheduling import place
from manager.store import Change, Create, ObjectStore, Remove, Update, Write
from scheduler import InvalidExpression, SchedulerConfig
from scheduler.from_api import node_matches

log = logging.getLogger(__name__)

#: Operations per store transaction (etcd refuses more than 128 by default).
BATCH = 100
#: The routing mesh's network, made when a service first publishes a port in ingress mode (as Docker's).
INGRESS_NAME = "ingress"


class Leader:
    """The leader's reconcile loop over an :class:`ObjectStore`. ``await run()`` until cancelled."""

    def __init__(
        self, store: ObjectStore, *, debounce: float = 0.002, scheduler: SchedulerConfig | None = None
    ):
        self.store = store
        self.debounce = debounce
        self.scheduler_config = scheduler
        self.allocator = Allocator()
        self._dirty_services: set[str] = set()
        self._everything = True
        self._wake = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        #: Ticks run so far (for tests and metrics).
        self.ticks = 0

    async def run(self) -> None:
        """Reconcile until cancelled."""
        self.allocator = Allocator.from_objects(
            self.store.objects(Network),
            self.store.objects(Service),
            self.store.objects(Task),
            self.store.objects(Node),
        )
        follower = asyncio.create_task(self._follow(), name="leader-follow")
        try:
            self._wake.set()
            while True:
                await self._wake.wait()
                await asyncio.sleep(self.debounce)
                self._wake.clear()
                try:
                    await self.tick()
                except (Conflict, AlreadyExists) as e:
                    log.debug("tick lost a race (%s); trying again", e)
                    self._everything = True
                    self._wake.set()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            for timer in self._timers.values():
                timer.cancel()

    async def _follow(self) -> None:
        async for change in self.store.changes():
            self._mark(change)

    def _mark(self, change: Change) -> None:
        obj = change.obj
        if change.kind == "services":
            self._dirty_services.add(obj.meta.id)
        elif change.kind == "tasks":
            if (
                change.action == "update"
                and change.old is not None
                and _same_for_orchestration(change.old, obj)
            ):
                return
            self._dirty_services.add(obj.service_id)
        elif change.kind in ("nodes", "networks", "clusters"):
            self._everything = True
        else:
            return
        self._wake.set()

    def _wake_at(self, service_id: str, when: datetime) -> None:
        delay = max((when - utcnow()).total_seconds(), 0.0)
        old = self._timers.pop(service_id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(service_id, None)
            self._dirty_services.add(service_id)
            self._wake.set()

        self._timers[service_id] = asyncio.get_running_loop().call_later(delay + 0.001, fire)

    # --- one tick ------------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Reconcile, allocate, schedule and write once."""
        self.ticks += 1
        store = self.store
        now = utcnow()
        if self._everything:
            dirty = {s.meta.id for s in store.objects(Service)} | {t.service_id for t in store.objects(Task)}
            self._everything = False
        else:
            dirty = self._dirty_services
        self._dirty_services = set()

        writes: list[Write] = []
        nodes = {n.meta.id: n for n in store.objects(Node)}
        networks = self._networks()
        self._release_removed(networks)
        writes += self._ensure_ingress(networks)
        writes += self._allocate_networks(networks)
        # Nodes are written on their own: they change under agents' registrations, and a conflict there
        # must not hold back the tasks.
        await self._write(self._allocate_nodes(nodes, networks))
        history = self._history_limit()
        created: list[Task] = []
        updated: dict[str, Task] = {}
        services: dict[str, Service] = {}
        for service_id in dirty:
            svc = store.get(Service, service_id)
            tasks = store.tasks_of_service(service_id)
            if svc is None:
                writes += self._remove_orphans(tasks)
                continue
            plan, new_svc = self._reconcile(svc, tasks, nodes, now, history)
            if plan.wake_at is not None:
                self._wake_at(service_id, plan.wake_at)
            allocated = self._allocate_service(new_svc or svc, networks)
            if allocated is not None:
                new_svc = allocated
            services[service_id] = new_svc or svc
            if new_svc is not None:
                writes.append(Update(new_svc))
            created += plan.create
            for t in plan.update:
                updated[t.meta.id] = t
            for t in plan.delete:  # history trimmed: the tasks' addresses are free again
                self.allocator.release_task(t)
            writes += [Remove(t) for t in plan.delete]

        ready = self._allocate_tasks(created, updated, networks, services)
        ready += self._schedule(nodes, ready, updated)
        writes += [Create(t) for t in ready if t.meta.version == 0]
        writes += [Update(t) for t in ready if t.meta.version != 0]
        writes += [Update(t) for t in updated.values()]
        await self._write(writes)

    def _reconcile(
        self, svc: Service, tasks: list[Task], nodes: dict[str, Node], now: datetime, history: int
    ) -> tuple[Plan, Service | None]:
        if svc.spec.mode is ServiceMode.GLOBAL:
            placement = svc.spec.task.placement
            try:
                plan = reconcile_global(
                    svc,
                    tasks,
                    nodes,
                    now,
                    matches=lambda n: node_matches(n, placement.constraints, placement.platforms),
                    history_limit=history,
                )
            except InvalidExpression as e:
                log.warning("service %s: %s", svc.spec.annotations.name, e)
                return Plan(), None
        else:
            plan = reconcile_replicated(svc, tasks, nodes, now, history_limit=history)
        new_svc: Service | None = None
        if svc.status.update_state in (UpdateState.UPDATING, UpdateState.ROLLBACK_STARTED):
            upd = plan_update(svc, tasks, now)
            # A slot (or node) the orchestrator is already refilling is not updated a second time.
            refilled = {(t.slot, t.node_id if t.slot == 0 else "") for t in plan.create}
            upd.create = [t for t in upd.create if (t.slot, t.node_id if t.slot == 0 else "") not in refilled]
            plan.merge(upd)
            new_svc = upd.service
        return plan, new_svc

    def _remove_orphans(self, tasks: list[Task]) -> list[Write]:
        """Tasks of a removed service: stop the live ones, delete those that have stopped."""
        writes: list[Write] = []
        for t in tasks:
            stopped = t.status.state.is_terminal or t.status.state < TaskState.ASSIGNED
            if stopped:
                self.allocator.release_task(t)
                writes.append(Remove(t))
            elif t.desired_state < TaskState.REMOVE:
                writes.append(Update(replace(t, desired_state=TaskState.REMOVE)))
        return writes

    # --- allocation --------------------------------------------------------------------------------------
    def _networks(self) -> dict[str, Network]:
        nets: dict[str, Network] = {}
        for n in self.store.objects(Network):
            nets[n.meta.id] = n
            nets[n.spec.annotations.name] = n
        return nets

    def _allocate_networks(self, networks: dict[str, Network]) -> list[Write]:
        writes: list[Write] = []
        for net in {n.meta.id: n for n in networks.values()}.values():
            if net.status.vni or net.spec.driver != "overlay":
                continue
            try:
                allocated = self.allocator.allocate_network(net)
            except AllocationError as e:
                log.warning("network %s: %s", net.spec.annotations.name, e)
                continue
            networks[net.meta.id] = networks[net.spec.annotations.name] = allocated
            writes.append(Update(allocated))
        return writes

    def _release_removed(self, networks: dict[str, Network]) -> None:
        """Give back what removed networks and services held (subnets, VNIs, published ports, VIPs)."""
        for network_id in [n for n in self.allocator.networks if n not in networks]:
            self.allocator.release_network(self.allocator.networks[network_id])
        for service_id in [s for s in self.allocator.services if self.store.get(Service, s) is None]:
            self.allocator.release_service(self.allocator.services[service_id])

    def _ensure_ingress(self, networks: dict[str, Network]) -> list[Write]:
        """Create the ingress network once a service publishes a port through the routing mesh."""
        if ingress_network(networks) is not None:
            return []
        if not any(publishes_ingress(s) for s in self.store.objects(Service)):
            return []
        if INGRESS_NAME in networks:
            log.warning("a network named %s is in the way of the routing mesh's network", INGRESS_NAME)
            return []
        now = utcnow()
        net = Network(
            meta=Meta(id=new_id(), created_at=now, updated_at=now),
            spec=NetworkSpec(
                annotations=Annotations(name=INGRESS_NAME, labels={"com.docker.swarm.internal": "true"}),
                driver="overlay",
                ingress=True,
            ),
        )
        try:
            net = self.allocator.allocate_network(net)
        except AllocationError as e:
            log.warning("ingress network: %s", e)
            return []
        networks[net.meta.id] = networks[INGRESS_NAME] = net
        return [Create(net)]

    def _allocate_nodes(self, nodes: dict[str, Node], networks: dict[str, Network]) -> list[Write]:
        """Every node gets its address on the ingress network; removed nodes give theirs back."""
        ingress = ingress_network(networks)
        for node_id in [n for n in self.allocator.nodes if n not in nodes]:
            self.allocator.release_node(node_id, ingress)
        if ingress is None or not ingress.status.vni:
            return []
        writes: list[Write] = []
        for node_id, node in nodes.items():
            try:
                allocated = self.allocator.allocate_node(node, ingress)
            except AllocationError as e:
                log.warning("node %s on the ingress network: %s", node_id, e)
                continue
            if allocated is not node:
                nodes[node_id] = allocated
                writes.append(Update(allocated))
        return writes

    def _allocate_service(self, svc: Service, networks: dict[str, Network]) -> Service | None:
        try:
            allocated = self.allocator.allocate_service(svc, networks)
        except AllocationError as e:
            log.warning("service %s: %s", svc.spec.annotations.name, e)
            return None
        return allocated if allocated.status != svc.status else None

    def _allocate_tasks(
        self,
        created: list[Task],
        updated: dict[str, Task],
        networks: dict[str, Network],
        services: dict[str, Service],
    ) -> list[Task]:
        """New tasks (and NEW ones from the store) with their service's published ports and addresses,
        moved to PENDING."""
        fresh = list(created)
        fresh += [
            t
            for t in self.store.objects(Task)
            if t.status.state is TaskState.NEW and t.meta.id not in updated
        ]
        out = []
        for t in fresh:
            if t.desired_state > TaskState.RUNNING:
                continue
            svc = services.get(t.service_id) or self.store.get(Service, t.service_id)
            if svc is not None:
                # The scheduler keeps host ports apart by these, the agent publishes them.
                t = replace(t, endpoint=Endpoint(ports=svc.status.endpoint.ports))
            try:
                t = self.allocator.attach_task(t, networks)
            except AllocationError as e:
                if t.status.message != str(e):
                    out.append(replace(t, status=replace(t.status, message=str(e))))
                continue
            out.append(t.with_state(TaskState.PENDING, "allocated"))
        return out

    def _schedule(self, nodes: dict[str, Node], fresh: list[Task], updated: dict[str, Task]) -> list[Task]:
        """Assign PENDING tasks (``fresh`` ones in place); returns store tasks that changed."""
        pending = [t for t in fresh if t.status.state is TaskState.PENDING]
        fresh_ids = {t.meta.id for t in pending}
        stored = [
            t
            for t in self.store.objects(Task)
            if t.status.state is TaskState.PENDING
            and t.desired_state <= TaskState.RUNNING
            and t.meta.id not in fresh_ids
            and t.meta.id not in updated
        ]
        candidates = pending + stored
        if not candidates:
            return []
        tasks_on: dict[str, list[Task]] = defaultdict(list)
        for node_id in nodes:
            tasks_on[node_id] = self.store.tasks_on_node(node_id)
        try:
            result = place(nodes.values(), tasks_on, candidates, self.scheduler_config)
        except InvalidExpression as e:
            log.warning("scheduling failed: %s", e)
            return []
        by_id = {t.meta.id: i for i, t in enumerate(fresh)}
        changed: list[Task] = []
        for t in candidates:
            target = result.assignments.get(t.meta.id)
            if target is not None:
                new = replace(
                    t.with_state(TaskState.ASSIGNED, "scheduler assigned task to node"), node_id=target
                )
            else:
                why = result.unassigned.get(t.meta.id)
                message = why.message if why is not None else "no suitable node"
                if t.status.message == message:
                    continue
                new = replace(t, status=replace(t.status, message=message))
            if t.meta.id in by_id:
                fresh[by_id[t.meta.id]] = new
            else:
                changed.append(new)
        return changed

    def _history_limit(self) -> int:
        clusters = self.store.objects(Cluster)
        return clusters[0].spec.orchestration.task_history_retention_limit if clusters else 5

    # --- writing -----------------------------------------------------------------------------------------
    async def _write(self, writes: list[Write]) -> None:
        last = 0
        for i in range(0, len(writes), BATCH):
            chunk = writes[i : i + BATCH]
            try:
                done = await self.store.batch(chunk)
            except (Conflict, AlreadyExists):
                # Someone else changed one of these objects: decide again on the fresh state.
                for w in chunk:
                    self._touch(w.obj)
                self._wake.set()
                continue
            last = max(last, *(o.meta.version for o in done)) if done else last
        if last:
            await self.store.wait_for(last)

    def _touch(self, obj: Any) -> None:
        if isinstance(obj, Task):
            self._dirty_services.add(obj.service_id)
        elif isinstance(obj, Service):
            self._dirty_services.add(obj.meta.id)
        else:
            self._everything = True


def _same_for_orchestration(old: Task, new: Task) -> bool:
    """A task change that no orchestrator reacts to (an agent reporting a step such as PREPARING)."""
    s_old, s_new = old.status.state, new.status.state
    quiet = {TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY, TaskState.STARTING}
    return old.desired_state == new.desired_state and s_new in quiet and s_old in quiet | {TaskState.ASSIGNED}
