"""The restart supervisor's decisions: should a task that ended be replaced, and from when.

Docker's semantics: ``--restart-condition`` none / on-failure / any (default any), ``--restart-delay``
(default 5 s) counted from the moment the task ended, ``--restart-max-attempts`` counted over
``--restart-window`` (0: the slot's whole history). A task lost with its node is a failure, not a success,
and is replaced at once: losing a node is not a crash loop to slow down.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from api import Node, Task, TaskState
from api.objects import NodeState, RestartCondition, RestartPolicy

#: Observed states that mean "the task ended by itself or was lost", as opposed to "we stopped it".
ENDED = frozenset({TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED, TaskState.ORPHANED})


@dataclass(frozen=True)
class RestartDecision:
    """``restart``: replace the task; ``not_before``: the earliest time to do so."""

    restart: bool
    not_before: datetime | None = None
    reason: str = ""


def has_ended(task: Task) -> bool:
    """The task stopped running although the orchestrator still wanted it to run."""
    return task.desired_state <= TaskState.RUNNING and (
        task.status.state in ENDED or task.status.state is TaskState.SHUTDOWN
    )


def orphan_if_node_lost(task: Task, nodes: dict[str, Node], now: datetime) -> Task | None:
    """The task marked ORPHANED if its node is down or gone while the task was live, else None."""
    if not task.node_id or task.status.state.is_terminal or task.status.state < TaskState.ASSIGNED:
        return None
    node = nodes.get(task.node_id)
    if node is not None and node.status.state is not NodeState.DOWN:
        return None
    why = "node removed" if node is None else "node down"
    return task.with_state(TaskState.ORPHANED, why, now=now)


def decide(policy: RestartPolicy, ended: Task, slot_history: list[Task], now: datetime) -> RestartDecision:
    """Whether to replace ``ended`` (the newest task of its slot or node) under ``policy``.

    ``slot_history`` is every task of the slot (or of the node, for global services), oldest first,
    ``ended`` included: each task after the first one is a restart.
    """
    state = ended.status.state
    if policy.condition is RestartCondition.NONE:
        return RestartDecision(False, reason="restart condition is none")
    if policy.condition is RestartCondition.ON_FAILURE and state is TaskState.COMPLETE:
        return RestartDecision(False, reason="task completed successfully (restart condition on-failure)")
    if policy.max_attempts > 0:
        restarts = slot_history[1:]
        if policy.window_ns > 0:
            since = now - timedelta(microseconds=policy.window_ns // 1000)
            restarts = [t for t in restarts if t.meta.created_at >= since]
        if len(restarts) >= policy.max_attempts:
            return RestartDecision(False, reason=f"reached {policy.max_attempts} restart attempts")
    if state is TaskState.ORPHANED:
        # Lost with its node: not a crash loop to slow down, so it is replaced at once.
        return RestartDecision(True, not_before=now)
    not_before = ended.status.timestamp + timedelta(microseconds=policy.delay_ns // 1000)
    return RestartDecision(True, not_before=not_before)


def replace_ended(ended: Task) -> Task:
    """The ended task, told to stay down (its replacement takes its slot)."""
    return replace(ended, desired_state=TaskState.SHUTDOWN)
