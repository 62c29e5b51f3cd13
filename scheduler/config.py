"""How the scheduler is set up: the strategy, the random seed, and which filters run."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any


class Strategy(enum.StrEnum):
    """How to choose among the nodes that pass every filter.

    - ``spread``: fewest tasks of the same service first (SwarmKit), then the lowest CPU% + memory%
      reserved (classic Swarm), then the fewest tasks overall;
    - ``binpack``: the highest CPU% + memory% that still fits, then the most tasks: fill a node before
      using the next;
    - ``random``: any node that fits, drawn from a generator seeded by :attr:`SchedulerConfig.seed`.

    Ties always go to the node that comes first in the snapshot, so results are reproducible.
    """

    SPREAD = "spread"
    BINPACK = "binpack"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The scheduler's settings. Every filter is on by default; set its flag to False to switch it off."""

    strategy: Strategy = Strategy.SPREAD
    seed: int = 0
    ready: bool = True
    availability: bool = True
    platform: bool = True
    constraints: bool = True
    affinity: bool = True
    dependencies: bool = True
    resources: bool = True
    ports: bool = True
    max_replicas: bool = True
    containerslots: bool = True

    def filter_enabled(self, name: str) -> bool:
        """Whether the filter called ``name`` (a ``Filter.name``) runs."""
        enabled = getattr(self, name, None)
        if not isinstance(enabled, bool):
            raise KeyError(f"no filter called {name!r}")
        return enabled

    def without(self, *filters: str) -> SchedulerConfig:
        """A copy with the named filters switched off: ``SchedulerConfig().without("resources")``."""
        changes: dict[str, Any] = {}
        for name in filters:
            self.filter_enabled(name)  # KeyError for a name that is not a filter
            changes[name] = False
        return dataclasses.replace(self, **changes)
