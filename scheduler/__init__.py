"""Shoal's scheduler: pure task placement (no I/O, no asyncio, deterministic given a seed).

Build a :class:`Scheduler` from a snapshot of :class:`NodeSnapshot` and call :meth:`Scheduler.schedule`
with :class:`TaskRequest` objects; the :class:`ScheduleResult` maps each task to a node, or to a
:class:`NoSuitableNode` that says why none fits. ``scheduler.from_api`` converts the object model.
"""

from scheduler.config import SchedulerConfig, Strategy
from scheduler.errors import DuplicateNode, DuplicateTask, InvalidExpression, SchedulerError
from scheduler.expr import parse_affinity, parse_constraint, parse_preference
from scheduler.filters import FILTER_NAMES, Filter
from scheduler.nodeinfo import NodeInfo
from scheduler.pipeline import Pipeline
from scheduler.scheduler import Scheduler, schedule
from scheduler.types import (
    Availability,
    HostPort,
    NodeRole,
    NodeSnapshot,
    NodeState,
    NoSuitableNode,
    Platform,
    Rejection,
    Resources,
    RunningTask,
    ScheduleResult,
    TaskRequest,
    TaskSpec,
)

__all__ = [
    "FILTER_NAMES",
    "Availability",
    "DuplicateNode",
    "DuplicateTask",
    "Filter",
    "HostPort",
    "InvalidExpression",
    "NoSuitableNode",
    "NodeInfo",
    "NodeRole",
    "NodeSnapshot",
    "NodeState",
    "Pipeline",
    "Platform",
    "Rejection",
    "Resources",
    "RunningTask",
    "ScheduleResult",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "Strategy",
    "TaskRequest",
    "TaskSpec",
    "parse_affinity",
    "parse_constraint",
    "parse_preference",
    "schedule",
]
