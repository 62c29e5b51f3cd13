"""Placing one batch of identical tasks on its candidate nodes.

The candidates (nodes that passed the static and batch filters) are arranged as SwarmKit's decision tree:
one level per placement preference, one branch per label value (nodes without the label share the ``""``
branch), sorted by value. Tasks are split over the branches of a level so that the service's task counts
even out (water-filling: the branches with the fewest tasks get the next ones); a branch that runs out of
room is closed and its share goes to the others. Without preferences the tree is a single leaf.

A leaf hands out tasks by strategy. ``spread`` and ``binpack`` keep the leaf's nodes in a heap keyed by the
strategy's score, so each placement costs O(log nodes): pop the best node, re-check the dynamic filters
(resources, ports, max replicas, slots, anti-affinity), place, push it back with its new score. A node
that fails a dynamic filter leaves the heap for the rest of the batch: placing more tasks of the batch can
only use more of it. ``random`` draws nodes from a seeded generator the same way.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from scheduler.config import Strategy
from scheduler.filters import Filter
from scheduler.nodeinfo import NodeIndex, NodeInfo
from scheduler.spec import CompiledSpec
from scheduler.types import TaskRequest

HeapKey = tuple[float, float, float, int]


def water_fill(counts: list[int], n: int) -> list[int]:
    """Split ``n`` new tasks over branches that already hold ``counts`` tasks, evening out the totals.

    The lowest branches are raised first; what cannot be split evenly goes to the earliest branches
    (by position) among the lowest. ``water_fill([3, 0, 1], 4) == [0, 3, 1]``.
    """
    k = len(counts)
    alloc = [0] * k
    if n <= 0 or k == 0:
        return alloc
    order = sorted(range(k), key=lambda j: (counts[j], j))
    level = counts[order[0]]
    low = 1  # how many branches sit at ``level`` (the first ``low`` of ``order``)
    remaining = n
    while True:
        while low < k and counts[order[low]] <= level:
            low += 1
        next_level = counts[order[low]] if low < k else None
        if next_level is None or (next_level - level) * low >= remaining:
            full, extra = divmod(remaining, low)
            level += full
            raised = order[:low]
            for j in raised:
                alloc[j] = level - counts[j]
            for j in sorted(raised)[:extra]:
                alloc[j] += 1
            return alloc
        remaining -= (next_level - level) * low
        level = next_level


class Leaf:
    """The nodes of one branch of the tree, ordered by the strategy."""

    __slots__ = ("_batch", "_heap", "_pool", "tasks")

    def __init__(self, batch: BatchPlacer, indices: list[int]) -> None:
        self._batch = batch
        nodes = batch.nodes
        sid = batch.spec.service_id
        self.tasks: int = sum(nodes[i].service_counts.get(sid, 0) for i in indices)
        self._heap: list[HeapKey] = []
        self._pool: list[int] = []
        if batch.strategy is Strategy.RANDOM:
            self._pool = list(indices)
        else:
            key = batch.key
            self._heap = [key(nodes[i]) for i in indices]
            heapq.heapify(self._heap)

    def place(self, n: int) -> int:
        """Place up to ``n`` tasks of the batch on this leaf's nodes; returns how many were placed."""
        placed = self._place_random(n) if self._batch.strategy is Strategy.RANDOM else self._place_heap(n)
        self.tasks += placed
        return placed

    def _place_heap(self, n: int) -> int:
        batch = self._batch
        heap, nodes, dynamic, key, assign = self._heap, batch.nodes, batch.dynamic, batch.key, batch.assign
        placed = 0
        while placed < n and heap:
            node = nodes[heap[0][3]]
            for f in dynamic:
                if not f.check(node):
                    heapq.heappop(heap)
                    break
            else:
                assign(node)
                placed += 1
                heapq.heapreplace(heap, key(node))
        return placed

    def _place_random(self, n: int) -> int:
        batch = self._batch
        pool, nodes, dynamic, rng = self._pool, batch.nodes, batch.dynamic, batch.rng
        placed = 0
        while placed < n and pool:
            at = rng.randrange(len(pool))
            node = nodes[pool[at]]
            if all(f.check(node) for f in dynamic):
                batch.assign(node)
                placed += 1
            else:
                pool[at] = pool[-1]
                pool.pop()
        return placed


class Branch:
    """One level of the decision tree: children per label value (sorted), or a leaf."""

    __slots__ = ("children", "leaf", "tasks")

    def __init__(self, children: list[Branch] | None = None, leaf: Leaf | None = None) -> None:
        self.children = children or []
        self.leaf = leaf
        self.tasks: int = leaf.tasks if leaf is not None else sum(c.tasks for c in self.children)

    def place(self, n: int) -> int:
        """Place up to ``n`` tasks in this subtree, evening out the children; returns how many fit."""
        if self.leaf is not None:
            got = self.leaf.place(n)
        else:
            got = 0
            open_ = self.children
            while got < n and open_:
                alloc = water_fill([c.tasks for c in open_], n - got)
                still_open: list[Branch] = []
                for child, want in zip(open_, alloc, strict=True):
                    if want == 0:
                        still_open.append(child)
                        continue
                    placed = child.place(want)
                    got += placed
                    if placed == want:
                        still_open.append(child)
                open_ = still_open
        self.tasks += got
        return got


class BatchPlacer:
    """The state of one batch: its tasks, where the next one is, and the strategy's scoring."""

    def __init__(
        self,
        spec: CompiledSpec,
        tasks: list[TaskRequest],
        nodes: list[NodeInfo],
        index: NodeIndex,
        dynamic: list[Filter],
        strategy: Strategy,
        rng: random.Random,
        assignments: dict[str, str],
    ) -> None:
        self.spec = spec
        self.tasks = tasks
        self.nodes = nodes
        self.index = index
        self.dynamic = dynamic
        self.strategy = strategy
        self.rng = rng
        self.assignments = assignments
        self.next = 0
        self.key: Callable[[NodeInfo], HeapKey] = self._key_for(strategy)

    def _key_for(self, strategy: Strategy) -> Callable[[NodeInfo], HeapKey]:
        sid, cpu, mem = self.spec.service_id, self.spec.nano_cpus, self.spec.memory_bytes
        if strategy is Strategy.BINPACK:

            def binpack(node: NodeInfo) -> HeapKey:
                return (-node.weight(cpu, mem), -node.task_count, 0, node.index)

            return binpack

        def spread(node: NodeInfo) -> HeapKey:
            return (node.service_counts.get(sid, 0), node.weight(cpu, mem), node.task_count, node.index)

        return spread

    @property
    def remaining(self) -> int:
        """Tasks of the batch not placed yet."""
        return len(self.tasks) - self.next

    def assign(self, node: NodeInfo) -> None:
        """Place the next task of the batch on ``node``."""
        task = self.tasks[self.next]
        self.next += 1
        node.add_task(self.spec, task.container_name)
        self.assignments[task.id] = node.id

    def run(self, candidates: list[int]) -> None:
        """Place as many of the remaining tasks as fit on ``candidates`` (node indices)."""
        if self.remaining and candidates:
            self._build(candidates, 0).place(self.remaining)

    def _build(self, indices: list[int], level: int) -> Branch:
        prefs = self.spec.preferences
        if level == len(prefs):
            return Branch(leaf=Leaf(self, indices))
        column = self.index.column(prefs[level].attribute)
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(column[i], []).append(i)
        return Branch(children=[self._build(groups[value], level + 1) for value in sorted(groups)])
