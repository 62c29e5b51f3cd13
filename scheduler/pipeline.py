"""The filter pipeline: runs the enabled filters for one batch and counts why nodes were ruled out."""

from __future__ import annotations

from scheduler.config import SchedulerConfig
from scheduler.filters import BATCH, DYNAMIC, FILTER_TYPES, STATIC, Filter
from scheduler.nodeinfo import NodeIndex, NodeInfo, mask_indices
from scheduler.reasons import ALL_REASONS
from scheduler.spec import CompiledSpec
from scheduler.types import Rejection

_RANK = {reason: i for i, reason in enumerate(ALL_REASONS)}


class Pipeline:
    """SwarmKit's Pipeline: ``set_task`` arms the filters for a batch, ``process`` runs them on a node and
    counts the first failure per node, ``rejections`` reports the counts, most frequent first.

    The fast path of the scheduler does not call ``process`` node by node: it ANDs the static filters'
    masks (:meth:`static_mask`) and runs the batch and dynamic filters itself. When tasks are left over,
    :meth:`explain` recounts over every node with the same first-failure rule.
    """

    def __init__(self, config: SchedulerConfig, index: NodeIndex, nodes: list[NodeInfo]) -> None:
        self.index = index
        self.nodes = nodes
        self.filters: list[Filter] = [cls() for cls in FILTER_TYPES if config.filter_enabled(cls.name)]
        for f in self.filters:
            f.prepare(index, nodes)
        self.active: list[Filter] = []
        self.static: list[Filter] = []
        self.batch: list[Filter] = []
        self.dynamic: list[Filter] = []
        self._failures: dict[tuple[str, str], int] = {}

    def set_task(self, spec: CompiledSpec) -> None:
        """Arm the filters for a batch of ``spec`` and reset the failure counts."""
        self.active = [f for f in self.filters if f.set_task(spec)]
        self.static = [f for f in self.active if f.kind == STATIC]
        self.batch = [f for f in self.active if f.kind == BATCH]
        self.dynamic = [f for f in self.active if f.kind == DYNAMIC]
        self._failures = {}

    def process(self, node: NodeInfo) -> bool:
        """Whether ``node`` passes every active filter; a failure is counted against the first one."""
        for f in self.active:
            if not f.check(node):
                key = f.rejection(node)
                self._failures[key] = self._failures.get(key, 0) + 1
                return False
        return True

    def rejections(self) -> tuple[Rejection, ...]:
        """The failures counted so far, most nodes first; ties in the order of ``ALL_REASONS``, then in
        the order they were first seen."""
        items = sorted(self._failures.items(), key=lambda kv: (-kv[1], _RANK.get(kv[0][0], len(_RANK))))
        return tuple(Rejection(reason, count, detail) for (reason, detail), count in items)

    def static_mask(self) -> int:
        """The nodes passing every active static filter."""
        mask = self.index.all_mask
        for f in self.static:
            mask &= f.mask(self.index)
        return mask

    def explain(self) -> tuple[Rejection, ...]:
        """Count, over every node as it stands now, the first filter that rules it out."""
        self._failures = {}
        failures = self._failures
        remaining = self.index.all_mask
        for f in self.static:
            passing = remaining & f.mask(self.index)
            for i in mask_indices(remaining & ~passing):
                key = f.rejection(self.nodes[i])
                failures[key] = failures.get(key, 0) + 1
            remaining = passing
        rest = self.batch + self.dynamic
        for i in mask_indices(remaining):
            node = self.nodes[i]
            for f in rest:
                if not f.check(node):
                    key = f.rejection(node)
                    failures[key] = failures.get(key, 0) + 1
                    break
        return self.rejections()
