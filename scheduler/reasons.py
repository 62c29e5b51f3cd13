"""Why a node was ruled out for a task: one constant per reason, and how each is put in words.

The constants are stable strings the manager can use as metric labels; the templates produce SwarmKit's
phrasing (``insufficient memory on 2 nodes``, ``1 node drained``).
"""

from __future__ import annotations

REASON_NODE_UNKNOWN = "node_unknown"
REASON_NODE_DOWN = "node_down"
REASON_NODE_NOT_READY = "node_not_ready"
REASON_NODE_DRAINED = "node_drained"
REASON_NODE_PAUSED = "node_paused"
REASON_PLATFORM = "platform"
REASON_CONSTRAINT = "constraint"
REASON_AFFINITY = "affinity"
REASON_DEPENDENCY = "dependency"
REASON_INSUFFICIENT_CPU = "insufficient_cpu"
REASON_INSUFFICIENT_MEMORY = "insufficient_memory"
REASON_HOST_PORT = "host_port"
REASON_MAX_REPLICAS = "max_replicas"
REASON_CONTAINER_SLOTS = "container_slots"

# {nodes} is "1 node" / "4 nodes"; {detail} what exactly failed.
_TEMPLATES: dict[str, str] = {
    REASON_NODE_UNKNOWN: "{nodes} not in the cluster",
    REASON_NODE_DOWN: "{nodes} down",
    REASON_NODE_NOT_READY: "{nodes} not ready",
    REASON_NODE_DRAINED: "{nodes} drained",
    REASON_NODE_PAUSED: "{nodes} paused",
    REASON_PLATFORM: "unsupported platform on {nodes}",
    REASON_CONSTRAINT: "constraint {detail} not met on {nodes}",
    REASON_AFFINITY: "affinity {detail} not met on {nodes}",
    REASON_DEPENDENCY: "dependency {detail} missing on {nodes}",
    REASON_INSUFFICIENT_CPU: "insufficient CPU on {nodes}",
    REASON_INSUFFICIENT_MEMORY: "insufficient memory on {nodes}",
    REASON_HOST_PORT: "host port {detail} in use on {nodes}",
    REASON_MAX_REPLICAS: "max replicas per node ({detail}) reached on {nodes}",
    REASON_CONTAINER_SLOTS: "no container slots left on {nodes}",
}

#: Every reason constant, in the order filters run.
ALL_REASONS: tuple[str, ...] = tuple(_TEMPLATES)

#: The filter (``Filter.name``, the switch in SchedulerConfig) behind each reason; an unknown pre-assigned
#: node is no filter's doing and counts under "node".
FILTER_OF_REASON: dict[str, str] = {
    REASON_NODE_UNKNOWN: "node",
    REASON_NODE_DOWN: "ready",
    REASON_NODE_NOT_READY: "ready",
    REASON_NODE_DRAINED: "availability",
    REASON_NODE_PAUSED: "availability",
    REASON_PLATFORM: "platform",
    REASON_CONSTRAINT: "constraints",
    REASON_AFFINITY: "affinity",
    REASON_DEPENDENCY: "dependencies",
    REASON_INSUFFICIENT_CPU: "resources",
    REASON_INSUFFICIENT_MEMORY: "resources",
    REASON_HOST_PORT: "ports",
    REASON_MAX_REPLICAS: "max_replicas",
    REASON_CONTAINER_SLOTS: "containerslots",
}


def describe_reason(reason: str, detail: str, count: int) -> str:
    """Put one reason in words: ``describe_reason(REASON_NODE_DRAINED, "", 1) == "1 node drained"``."""
    nodes = f"{count} node{'' if count == 1 else 's'}"
    template = _TEMPLATES.get(reason, reason + " on {nodes}")
    return template.format(nodes=nodes, detail=detail)
