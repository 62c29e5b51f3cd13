"""Every allowed and every forbidden task state transition."""

from __future__ import annotations

import itertools

import pytest

from api import InvalidTransition, Task, TaskState, can_transition, check_transition
from api.objects import Meta, TaskStatus

S = TaskState
# The lifecycle written out by hand, independently of api.states, so a change to either shows up here.
ALLOWED: dict[TaskState, set[TaskState]] = {
    S.NEW: {S.PENDING, S.SHUTDOWN, S.REMOVE},
    S.PENDING: {S.ASSIGNED, S.SHUTDOWN, S.REMOVE},
    S.ASSIGNED: {S.ACCEPTED, S.REJECTED, S.SHUTDOWN, S.ORPHANED, S.REMOVE},
    S.ACCEPTED: {S.PREPARING, S.REJECTED, S.FAILED, S.SHUTDOWN, S.ORPHANED, S.REMOVE},
    S.PREPARING: {S.READY, S.REJECTED, S.FAILED, S.SHUTDOWN, S.ORPHANED, S.REMOVE},
    S.READY: {S.STARTING, S.FAILED, S.SHUTDOWN, S.ORPHANED, S.REMOVE},
    S.STARTING: {S.RUNNING, S.FAILED, S.SHUTDOWN, S.ORPHANED, S.REMOVE},
    S.RUNNING: {S.COMPLETE, S.FAILED, S.SHUTDOWN, S.ORPHANED, S.REMOVE},
    S.COMPLETE: {S.REMOVE},
    S.SHUTDOWN: {S.REMOVE},
    S.FAILED: {S.REMOVE},
    S.REJECTED: {S.REMOVE},
    S.ORPHANED: {S.REMOVE},
    S.REMOVE: set(),
}

ALL_PAIRS = list(itertools.product(TaskState, TaskState))


def test_the_table_covers_every_state() -> None:
    assert set(ALLOWED) == set(TaskState)


@pytest.mark.parametrize(("current", "requested"), ALL_PAIRS, ids=lambda s: s.name)
def test_transition(current: TaskState, requested: TaskState) -> None:
    expected = requested in ALLOWED[current]
    assert can_transition(current, requested) is expected
    task = Task(meta=Meta(id="t1"), status=TaskStatus(state=current))
    if expected:
        check_transition(current, requested)
        moved = task.with_state(requested, "because")
        assert moved.status.state is requested
        assert moved.status.message == "because"
        assert task.status.state is current  # the original is untouched (frozen)
    else:
        with pytest.raises(InvalidTransition) as err:
            task.with_state(requested)
        assert err.value.current == current.name
        assert err.value.requested == requested.name
        assert "t1" in str(err.value)


def test_states_only_move_forward() -> None:
    for current, requested in ALL_PAIRS:
        if can_transition(current, requested):
            assert current < requested, (current, requested)


def test_terminal_states_end_the_task() -> None:
    assert {s for s in TaskState if s.is_terminal} == {
        S.COMPLETE,
        S.SHUTDOWN,
        S.FAILED,
        S.REJECTED,
        S.ORPHANED,
        S.REMOVE,
    }
    assert S.RUNNING.is_live and not S.FAILED.is_live
