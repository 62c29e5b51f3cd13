"""The JSON schema of the Compose files Shoal deploys: version 3.x keys, restricted to what Shoal supports.

Keys that Swarm ignores when deploying a stack (``build``, ``restart``, ``container_name`` …) are listed in
:data:`IGNORED_SERVICE_KEYS`; the loader removes them with a warning before validating, so anything else
this schema does not describe is an error. ``x-message`` is read by the loader to word an error in the
user's terms ("must be a duration such as 10s") instead of a regular expression.
"""

from __future__ import annotations

from typing import Any

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"

#: Service keys Swarm ignores in stacks; Docker says "Ignoring unsupported options" and so do we.
IGNORED_SERVICE_KEYS = frozenset(
    {
        "build",
        "cap_add",
        "cap_drop",
        "cgroup_parent",
        "cgroupns_mode",
        "container_name",
        "cpu_shares",
        "cpu_quota",
        "cpuset",
        "credential_spec",
        "devices",
        "dns",
        "dns_search",
        "domainname",
        "expose",
        "external_links",
        "extra_hosts",
        "ipc",
        "isolation",
        "links",
        "logging",
        "mac_address",
        "mem_limit",
        "memswap_limit",
        "network_mode",
        "pid",
        "platform",
        "privileged",
        "profiles",
        "pull_policy",
        "restart",
        "security_opt",
        "shm_size",
        "stdin_open",
        "sysctls",
        "tmpfs",
        "tty",
        "ulimits",
        "userns_mode",
    }
)

#: Keys Shoal refuses with a specific explanation (anything else unknown gets "unsupported key").
UNSUPPORTED: dict[str, str] = {
    "configs": "configs are not supported by Shoal (use secrets, or bake the file into the image)",
    "generic_resources": "generic resources are not supported by Shoal",
    "ipv4_address": "static addresses are not supported in stacks",
    "ipv6_address": "static addresses are not supported in stacks",
}

_DURATION: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$|^0$",
    "x-message": "must be a duration such as 10s, 1m30s or 500ms",
}
_MEMORY: dict[str, Any] = {
    "type": ["string", "integer"],
    "pattern": r"^\d+(?:\.\d+)?\s*[kmgtpKMGTP]?[iI]?[bB]?$",
    "minimum": 0,
    "x-message": "must be a size such as 512M, 1G or 1048576",
}
_CPUS: dict[str, Any] = {
    "type": ["string", "number"],
    "pattern": r"^\d+(?:\.\d+)?$",
    "minimum": 0,
    "x-message": "must be a number of CPUs such as 0.5 or 2",
}
_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_STRING_OR_LIST: dict[str, Any] = {"type": ["string", "array"], "items": {"type": "string"}}
_LIST_OR_DICT: dict[str, Any] = {
    "type": ["object", "array"],
    "items": {"type": "string"},
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}
_NONNEG_INT: dict[str, Any] = {"type": "integer", "minimum": 0}


def _update_config(actions: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "parallelism": _NONNEG_INT,
            "delay": _DURATION,
            "failure_action": {"enum": actions},
            "monitor": _DURATION,
            "max_failure_ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "order": {"enum": ["stop-first", "start-first"]},
        },
    }


def _resources(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {"cpus": _CPUS, "memory": _MEMORY, **extra},
    }


_DEPLOY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "mode": {"enum": ["replicated", "global"]},
        "replicas": _NONNEG_INT,
        "endpoint_mode": {"enum": ["vip", "dnsrr"]},
        "labels": _LIST_OR_DICT,
        "placement": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "constraints": _STRINGS,
                "preferences": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["spread"],
                        "properties": {"spread": {"type": "string"}},
                    },
                },
                "max_replicas_per_node": _NONNEG_INT,
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"limits": _resources({}), "reservations": _resources({})},
        },
        "restart_policy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "condition": {"enum": ["none", "on-failure", "any"]},
                "delay": _DURATION,
                "max_attempts": _NONNEG_INT,
                "window": _DURATION,
            },
        },
        "update_config": _update_config(["continue", "rollback", "pause"]),
        "rollback_config": _update_config(["continue", "pause"]),
    },
}

_PORT_SHORT = r"^(?:\d+(?:-\d+)?:)?\d+(?:-\d+)?(?:/(?:tcp|udp|sctp))?$"

_SERVICE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "image": {"type": "string", "minLength": 1},
        "command": {"type": ["string", "array", "null"], "items": {"type": "string"}},
        "entrypoint": {"type": ["string", "array", "null"], "items": {"type": "string"}},
        "environment": _LIST_OR_DICT,
        "env_file": _STRING_OR_LIST,
        "labels": _LIST_OR_DICT,
        "working_dir": {"type": "string"},
        "user": {"type": "string"},
        "hostname": {"type": "string"},
        "stop_signal": {"type": "string"},
        "stop_grace_period": _DURATION,
        "init": {"type": "boolean"},
        "read_only": {"type": "boolean"},
        "depends_on": {
            "type": ["array", "object"],
            "items": {"type": "string"},
            "additionalProperties": {"type": "object", "properties": {"condition": {"type": "string"}}},
        },
        "healthcheck": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "test": {"type": ["string", "array"], "items": {"type": "string"}},
                "interval": _DURATION,
                "timeout": _DURATION,
                "start_period": _DURATION,
                "retries": _NONNEG_INT,
                "disable": {"type": "boolean"},
            },
        },
        "ports": {
            "type": "array",
            "items": {
                "type": ["string", "integer", "object"],
                "pattern": _PORT_SHORT,
                "minimum": 1,
                "maximum": 65535,
                "x-message": "must be a port such as 80, 8080:80 or 8080:80/udp",
                "additionalProperties": False,
                "required": ["target"],
                "properties": {
                    "target": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "published": {"type": "integer", "minimum": 0, "maximum": 65535},
                    "protocol": {"enum": ["tcp", "udp", "sctp"]},
                    "mode": {"enum": ["ingress", "host"]},
                },
            },
        },
        "networks": {
            "type": ["array", "object"],
            "items": {"type": "string"},
            "additionalProperties": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {"aliases": _STRINGS},
            },
        },
        "volumes": {
            "type": "array",
            "items": {
                "type": ["string", "object"],
                "additionalProperties": False,
                "required": ["target"],
                "properties": {
                    "type": {"enum": ["volume", "bind", "tmpfs"]},
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "read_only": {"type": "boolean"},
                    "consistency": {"type": "string"},
                    "volume": {"type": "object", "properties": {"nocopy": {"type": "boolean"}}},
                    "bind": {"type": "object", "properties": {"propagation": {"type": "string"}}},
                    "tmpfs": {"type": "object", "properties": {"size": _MEMORY}},
                },
            },
        },
        "secrets": {
            "type": "array",
            "items": {
                "type": ["string", "object"],
                "additionalProperties": False,
                "required": ["source"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "uid": {"type": "string"},
                    "gid": {"type": "string"},
                    "mode": {"type": "integer"},
                },
            },
        },
        "deploy": _DEPLOY,
    },
}

_EXTERNAL: dict[str, Any] = {
    "type": ["boolean", "object"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}},
}

_NETWORK: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "driver": {"enum": ["overlay"], "x-message": "must be overlay (stacks span hosts)"},
        "driver_opts": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        "ipam": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "driver": {"enum": ["default"]},
                "config": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["subnet"],
                        "properties": {
                            "subnet": {"type": "string"},
                            "gateway": {"type": "string"},
                            "ip_range": {"type": "string"},
                            "aux_addresses": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "external": _EXTERNAL,
        "name": {"type": "string"},
        "internal": {"type": "boolean"},
        "attachable": {"type": "boolean"},
        "enable_ipv6": {"type": "boolean"},
        "labels": _LIST_OR_DICT,
    },
}

_VOLUME: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "driver": {"type": "string"},
        "driver_opts": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        "external": _EXTERNAL,
        "name": {"type": "string"},
        "labels": _LIST_OR_DICT,
    },
}

_SECRET: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "file": {"type": "string"},
        "external": _EXTERNAL,
        "name": {"type": "string"},
        "labels": _LIST_OR_DICT,
    },
}


def _named(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "propertyNames": {"pattern": NAME_PATTERN, "x-message": f"is not a valid {kind} name"},
        "additionalProperties": item,
    }


#: The whole file.
SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "version": {
            "type": ["string", "number"],
            "pattern": r"^3(\.\d+)?$",
            "x-message": "must be 3 or 3.x (Compose file format 3)",
        },
        "name": {"type": "string"},
        "services": _named("service", _SERVICE),
        "networks": _named("network", _NETWORK),
        "volumes": _named("volume", _VOLUME),
        "secrets": _named("secret", _SECRET),
    },
}
