"""The dispatcher's small rules: which tasks an agent gets, which changes it must hear of, token roles."""

from __future__ import annotations

from dataclasses import replace

import pytest

from api import Task, TaskState
from api.objects import JoinTokens, Meta, NetworkAttachment, NodeRole, TaskSpec, TaskStatus
from manager.dispatcher import agent_view_changed, is_assigned
from manager.join import role_for_token

TOKENS = JoinTokens(worker="SWMTKN-1-worker", manager="SWMTKN-1-manager")


def task(state: TaskState = TaskState.ASSIGNED, node_id: str = "n1") -> Task:
    return Task(meta=Meta(id="t1", version=3), node_id=node_id, status=TaskStatus(state=state))


@pytest.mark.parametrize(
    ("state", "node_id", "assigned"),
    [
        (TaskState.PENDING, "n1", False),
        (TaskState.ASSIGNED, "", False),
        (TaskState.ASSIGNED, "n1", True),
        (TaskState.RUNNING, "n1", True),
        (TaskState.COMPLETE, "n1", True),  # kept (with its container) until the manager deletes it
    ],
)
def test_is_assigned(state: TaskState, node_id: str, assigned: bool) -> None:
    assert is_assigned(task(state, node_id)) is assigned


def test_status_echoes_are_not_sent_back_to_the_agent() -> None:
    t = task()
    assert not agent_view_changed(t, replace(t, status=TaskStatus(state=TaskState.RUNNING)))
    assert not agent_view_changed(t, replace(t, meta=replace(t.meta, version=9)))


@pytest.mark.parametrize(
    "change",
    [
        {"desired_state": TaskState.SHUTDOWN},
        {"spec": TaskSpec(force_update=1)},
        {"networks": (NetworkAttachment(network_id="net1"),)},
        {"node_id": "n2"},
    ],
)
def test_changes_the_agent_acts_on_are_sent(change: dict[str, object]) -> None:
    t = task()
    assert agent_view_changed(t, replace(t, **change))  # type: ignore[arg-type]


def test_the_token_decides_the_role() -> None:
    assert role_for_token("SWMTKN-1-worker", TOKENS) is NodeRole.WORKER
    assert role_for_token("SWMTKN-1-manager", TOKENS) is NodeRole.MANAGER
    assert role_for_token("SWMTKN-1-other", TOKENS) is None
    assert role_for_token("", TOKENS) is None
    assert role_for_token("", JoinTokens()) is None, "a cluster without tokens admits nobody"
