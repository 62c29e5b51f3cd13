"""The global orchestrator: one task of the service on every eligible node, nodes that join later included.

A node is eligible when it is ready, not drained, and matches the service's constraints (the caller
passes that test, built from the scheduler's constraint filter, so both speak the same syntax). A paused
node keeps its task but gets no new one. A drained or no longer matching node has its task shut down; a
node that is down has its task orphaned, and the task comes back when the node does. Tasks that end are
restarted on the same node under the restart policy, as in the replicated orchestrator.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from api import Node, Service, Task
from api.objects import NodeAvailability, NodeState
from manager.orchestrator import restart
from manager.orchestrator.plan import Plan, group_by_node, new_task, wants_running
from manager.orchestrator.replicated import trim_history


def reconcile_global(
    service: Service,
    tasks: list[Task],
    nodes: dict[str, Node],
    now: datetime,
    matches: Callable[[Node], bool] = lambda node: True,
    history_limit: int = 5,
) -> Plan:
    """The writes that give every eligible node one task of ``service``. ``matches`` applies the service's
    constraints (and platforms) to a node."""
    plan = Plan()
    by_node = group_by_node(tasks)
    for node_id, history in by_node.items():
        newest = history[-1]
        if not wants_running(newest):
            continue
        node = nodes.get(node_id)
        orphaned = restart.orphan_if_node_lost(newest, nodes, now)
        if orphaned is not None:
            plan.update.append(restart.replace_ended(orphaned))
            continue
        if node is None or node.spec.availability is NodeAvailability.DRAIN or not matches(node):
            plan.shut_down(newest)
            continue
        if restart.has_ended(newest):
            decision = restart.decide(service.spec.task.restart_policy, newest, history, now)
            if decision.restart and decision.not_before is not None:
                if decision.not_before > now:
                    plan.wake_no_later_than(decision.not_before)
                else:
                    plan.update.append(restart.replace_ended(newest))
                    plan.create.append(new_task(service, 0, now, node_id=node_id))

    for node in nodes.values():
        if node.meta.id in by_node and any(wants_running(t) for t in by_node[node.meta.id]):
            continue
        if _accepts_new_tasks(node) and matches(node):
            plan.create.append(new_task(service, 0, now, node_id=node.meta.id))

    # History is kept per node for global services, as Docker does.
    plan.delete += trim_history({i: h for i, (_, h) in enumerate(sorted(by_node.items()))}, history_limit)
    return plan


def _accepts_new_tasks(node: Node) -> bool:
    return node.status.state is NodeState.READY and node.spec.availability is NodeAvailability.ACTIVE
