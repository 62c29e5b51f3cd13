"""Normalising validated Compose data and merging several files into one, in order.

Normalising gives every value one shape (environment and labels as mappings, service networks as a
mapping, depends_on and env_file as lists, relative paths made absolute against the file's directory),
so merging is a plain walk. Merging follows Compose: mappings merge key by key (later files win), most
lists are replaced, but ports, depends_on, env_file and placement constraints/preferences are unions,
volumes merge by target and secrets by source.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from swarmctl.stack.source import KeyPath

_UNION_PATHS: set[KeyPath] = {
    ("ports",),
    ("depends_on",),
    ("env_file",),
    ("deploy", "placement", "constraints"),
    ("deploy", "placement", "preferences"),
}


def _to_mapping(value: Any, *, empty: Any) -> dict[str, Any]:
    """A Compose list-or-dict (``["A=1", "B"]`` or ``{A: 1}``) as a dict of strings (bare keys: ``empty``)."""
    if isinstance(value, dict):
        return {str(k): _scalar(v) for k, v in value.items()}
    out: dict[str, Any] = {}
    for item in value or []:
        key, sep, val = str(item).partition("=")
        out[key] = val if sep else empty
    return out


def _scalar(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _absolute(path: str, base: Path) -> str:
    expanded = os.path.expanduser(path)
    return str(Path(expanded) if os.path.isabs(expanded) else (base / expanded).resolve())


def _is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def normalize(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """One file's validated data in the canonical shape (a deep copy; the input is left alone)."""
    out = copy.deepcopy(data)
    for svc in (out.get("services") or {}).values():
        _normalize_service(svc, base)
    for section in ("networks", "volumes", "secrets"):
        items = out.get(section) or {}
        for name, item in list(items.items()):
            item = {} if item is None else item
            if "labels" in item:
                item["labels"] = _to_mapping(item["labels"], empty="")
            if section == "secrets" and "file" in item:
                item["file"] = _absolute(item["file"], base)
            items[name] = item
        if section in out:
            out[section] = items
    return out


def _normalize_service(svc: dict[str, Any], base: Path) -> None:
    if "environment" in svc:
        svc["environment"] = _to_mapping(svc["environment"], empty=None)
    if "labels" in svc:
        svc["labels"] = _to_mapping(svc["labels"], empty="")
    deploy = svc.get("deploy") or {}
    if "labels" in deploy:
        deploy["labels"] = _to_mapping(deploy["labels"], empty="")
    if isinstance(svc.get("networks"), list):
        svc["networks"] = {n: None for n in svc["networks"]}
    if isinstance(svc.get("depends_on"), dict):
        svc["depends_on"] = list(svc["depends_on"])
    if isinstance(svc.get("env_file"), str):
        svc["env_file"] = [svc["env_file"]]
    if "env_file" in svc:
        svc["env_file"] = [_absolute(p, base) for p in svc["env_file"]]
    volumes = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and _is_host_path(parts[0]):
                parts[0] = _absolute(parts[0], base)
            v = ":".join(parts)
        elif v.get("type") == "bind" and v.get("source") and not os.path.isabs(v["source"]):
            v = {**v, "source": _absolute(v["source"], base)}
        volumes.append(v)
    if "volumes" in svc:
        svc["volumes"] = volumes


def volume_target(v: Any) -> str:
    """The container path of a service volume (short or long form)."""
    if isinstance(v, Mapping):
        return str(v.get("target", ""))
    parts = str(v).split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


def secret_source(s: Any) -> str:
    return str(s["source"]) if isinstance(s, Mapping) else str(s)


def _merge_by(key: Callable[[Any], str]) -> Callable[[list[Any], list[Any]], list[Any]]:
    def merge(base: list[Any], override: list[Any]) -> list[Any]:
        merged = {key(x): x for x in base}
        for x in override:
            merged[key(x)] = x
        return list(merged.values())

    return merge


_LIST_MERGERS: dict[KeyPath, Callable[[list[Any], list[Any]], list[Any]]] = {
    ("volumes",): _merge_by(volume_target),
    ("secrets",): _merge_by(secret_source),
}


def _merge_value(base: Any, override: Any, path: KeyPath) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge_value(base[k], v, (*path, k)) if k in base else v
        return out
    if isinstance(base, list) and isinstance(override, list):
        if path in _UNION_PATHS:
            return base + [x for x in override if x not in base]
        merger = _LIST_MERGERS.get(path)
        if merger is not None:
            return merger(base, override)
    return override


def merge_all(files: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several normalised files as one: services merged per service, the rest key by key."""
    result: dict[str, Any] = {}
    for data in files:
        for section, value in data.items():
            if section == "services":
                services = dict(result.get("services") or {})
                for name, svc in (value or {}).items():
                    services[name] = _merge_value(services[name], svc, ()) if name in services else svc
                result["services"] = services
            elif isinstance(value, dict) and isinstance(result.get(section), dict):
                result[section] = {**result[section], **value}
            else:
                result[section] = value
    return result
