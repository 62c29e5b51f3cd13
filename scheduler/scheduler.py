"""The scheduler: given a snapshot of nodes and a batch of tasks, a node for each task or why none fits.

One call of :meth:`Scheduler.schedule` goes like this:

1. every task's spec is compiled (expressions parsed) before anything is placed, so a malformed
   expression fails the call cleanly with :class:`~scheduler.errors.InvalidExpression`;
2. pre-assigned tasks (``node_id`` set, as for global services) are checked against their node;
3. the other tasks are grouped into batches of identical tasks (same service, equal spec), in order of
   first appearance. For each batch the static filters are reduced to one bit mask of candidate nodes
   (cached per expression for the run), the batch filters are run once per candidate, and the tasks are
   spread over the candidates (``scheduler.placement``). Soft expressions narrow the candidates first;
   tasks that do not fit there fall back to every candidate;
4. tasks left over get a :class:`~scheduler.types.NoSuitableNode` that counts, per reason, the nodes
   that ruled them out.

The scheduler keeps its :class:`~scheduler.nodeinfo.NodeInfo` between calls, so a later call sees what
an earlier one placed. It does no I/O and, given the same inputs and seed, always decides the same.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from scheduler.config import SchedulerConfig
from scheduler.errors import DuplicateNode, DuplicateTask
from scheduler.nodeinfo import NodeIndex, NodeInfo, mask_indices
from scheduler.pipeline import Pipeline
from scheduler.placement import BatchPlacer
from scheduler.reasons import REASON_NODE_UNKNOWN
from scheduler.spec import CompiledSpec, compile_spec
from scheduler.types import (
    NodeSnapshot,
    NoSuitableNode,
    Rejection,
    ScheduleResult,
    TaskRequest,
    TaskSpec,
)


class Scheduler:
    """Places tasks on one snapshot of nodes; see the module documentation for the steps."""

    def __init__(self, nodes: Iterable[NodeSnapshot], config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        snapshot = list(nodes)
        self.index = NodeIndex(snapshot)
        self.nodes: list[NodeInfo] = [NodeInfo(i, n) for i, n in enumerate(snapshot)]
        self._by_id: dict[str, NodeInfo] = {}
        self._placed: set[str] = set()
        for info in self.nodes:
            if info.id in self._by_id:
                raise DuplicateNode(info.id)
            self._by_id[info.id] = info
            self._placed.update(t.id for t in info.node.tasks)
        self.pipeline = Pipeline(self.config, self.index, self.nodes)
        self.rng = random.Random(self.config.seed)

    def node(self, node_id: str) -> NodeInfo:
        """The current state of a node (raises KeyError for an unknown id)."""
        return self._by_id[node_id]

    def schedule(self, tasks: Iterable[TaskRequest]) -> ScheduleResult:
        """Place ``tasks``; see the module documentation. Raises InvalidExpression or DuplicateTask
        before placing anything."""
        preassigned, batches = self._group(tasks)
        compiled: dict[tuple[str, TaskSpec], CompiledSpec] = {}

        def compiled_for(service_id: str, spec: TaskSpec) -> CompiledSpec:
            key = (service_id, spec)
            c = compiled.get(key)
            if c is None:
                c = compiled[key] = compile_spec(service_id, spec)
            return c

        plan = [(compiled_for(t.service_id, t.spec), t) for t in preassigned]
        batch_plan = [(compiled_for(sid, spec), group) for (sid, spec), group in batches.items()]

        assignments: dict[str, str] = {}
        unassigned: dict[str, NoSuitableNode] = {}
        for spec, task in plan:
            self._confirm(spec, task, assignments, unassigned)
        for spec, group in batch_plan:
            self._place_batch(spec, group, assignments, unassigned)
        self._placed.update(assignments)
        return ScheduleResult(assignments=assignments, unassigned=unassigned)

    def _group(
        self, tasks: Iterable[TaskRequest]
    ) -> tuple[list[TaskRequest], dict[tuple[str, TaskSpec], list[TaskRequest]]]:
        """Split pre-assigned tasks off and group the rest into batches of identical tasks."""
        placed = self._placed
        seen: set[str] = set()
        preassigned: list[TaskRequest] = []
        # Tasks of a service usually share one spec object: group by identity first (cheap), then merge
        # groups whose specs are equal but distinct objects.
        by_identity: dict[tuple[str, int], list[TaskRequest]] = {}
        for task in tasks:
            tid = task.id
            if tid in seen or tid in placed:
                raise DuplicateTask(tid)
            seen.add(tid)
            if task.node_id:
                preassigned.append(task)
                continue
            key = (task.service_id, id(task.spec))
            group = by_identity.get(key)
            if group is None:
                group = by_identity[key] = []
            group.append(task)
        batches: dict[tuple[str, TaskSpec], list[TaskRequest]] = {}
        for group in by_identity.values():
            spec_key = (group[0].service_id, group[0].spec)
            existing = batches.get(spec_key)
            if existing is None:
                batches[spec_key] = group
            else:
                existing.extend(group)
        return preassigned, batches

    def _confirm(
        self,
        spec: CompiledSpec,
        task: TaskRequest,
        assignments: dict[str, str],
        unassigned: dict[str, NoSuitableNode],
    ) -> None:
        node = self._by_id.get(task.node_id)
        if node is None:
            reason = Rejection(REASON_NODE_UNKNOWN, 1, task.node_id)
            unassigned[task.id] = NoSuitableNode(task.service_id, (reason,))
            return
        self.pipeline.set_task(spec)
        if self.pipeline.process(node):
            node.add_task(spec, task.container_name)
            assignments[task.id] = node.id
        else:
            unassigned[task.id] = NoSuitableNode(task.service_id, self.pipeline.rejections())

    def _place_batch(
        self,
        spec: CompiledSpec,
        tasks: list[TaskRequest],
        assignments: dict[str, str],
        unassigned: dict[str, NoSuitableNode],
    ) -> None:
        pipeline = self.pipeline
        pipeline.set_task(spec)
        nodes = self.nodes
        candidates = mask_indices(pipeline.static_mask())
        for f in pipeline.batch:
            candidates = [i for i in candidates if f.check(nodes[i])]
        tiers = [candidates]
        if spec.has_soft:
            preferred = self._soft(spec, candidates)
            if len(preferred) != len(candidates):
                tiers.insert(0, preferred)
        placer = BatchPlacer(
            spec, tasks, nodes, self.index, pipeline.dynamic, self.config.strategy, self.rng, assignments
        )
        for tier in tiers:
            placer.run(tier)
            if not placer.remaining:
                return
        reason = NoSuitableNode(spec.service_id, pipeline.explain())
        for task in tasks[placer.next :]:
            unassigned[task.id] = reason

    def _soft(self, spec: CompiledSpec, candidates: list[int]) -> list[int]:
        """Narrow ``candidates`` by each soft expression in turn, skipping one that would leave none
        (classic Swarm drops a soft expression no node satisfies)."""
        nodes = self.nodes
        preferred = candidates
        for c in spec.soft_constraints:
            mask = self.index.constraint_mask(c)
            narrowed = [i for i in preferred if (mask >> i) & 1]
            if narrowed:
                preferred = narrowed
        for a in spec.soft_affinities:
            narrowed = [i for i in preferred if nodes[i].affinity_ok(a)]
            if narrowed:
                preferred = narrowed
        return preferred


def schedule(
    nodes: Sequence[NodeSnapshot], tasks: Iterable[TaskRequest], config: SchedulerConfig | None = None
) -> ScheduleResult:
    """Place ``tasks`` on ``nodes`` in one go (a fresh :class:`Scheduler` for one call)."""
    return Scheduler(nodes, config).schedule(tasks)
