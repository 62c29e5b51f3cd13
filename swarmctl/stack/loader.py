"""Loading stack files: read → interpolate → drop ignored keys → validate → normalise → merge → check.

Each file is validated on its own, after interpolation, so every schema problem names the file and line
it is on; the merged result is then checked for what only the whole can tell (a service without an image,
a network a service uses but nobody declares, a depends_on cycle). The result is immutable.
"""

from __future__ import annotations

import graphlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from swarmctl.stack import interpolate, merge, source, validate
from swarmctl.stack.errors import Problem, StackFileError
from swarmctl.stack.model import ComposeConfig, freeze
from swarmctl.stack.source import KeyPath, SourceFile


def _read_text(name: str, stdin: TextIO | None) -> tuple[str, Path]:
    if name == "-":
        return (stdin or sys.stdin).read(), Path.cwd()
    path = Path(name)
    try:
        return path.read_text(encoding="utf-8"), path.resolve().parent
    except OSError as e:
        raise StackFileError([Problem(name, 0, "", f"cannot read the file: {e.strerror or e}")]) from None
    except UnicodeDecodeError:
        raise StackFileError([Problem(name, 0, "", "not a text file (UTF-8)")]) from None


def load(
    files: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
) -> ComposeConfig:
    """Load and merge ``files`` (``-`` is stdin); raises StackFileError listing every problem found."""
    if not files:
        raise StackFileError([Problem("", 0, "", "no stack file given (use -c FILE)")])
    texts = [(name, *_read_text(name, stdin)) for name in files]
    environment = interpolate.read_dotenv(texts[0][2] / ".env")
    environment.update(os.environ if env is None else env)

    warnings: list[str] = []
    sources: list[SourceFile] = []
    normalized: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for name, text, directory in texts:
        try:
            src = source.read(name, text, directory)
            src, interp_warnings = interpolate.interpolate(src, environment)
            src, ignored = validate.strip_ignored(src)
            validate.check(src)
        except StackFileError as e:
            problems += e.problems
            continue
        warnings += ignored + [w for w in interp_warnings if w not in warnings]
        sources.append(src)
        normalized.append(merge.normalize(src.data, directory))
    if problems:
        raise StackFileError(problems)

    merged = merge.merge_all(normalized)
    config = ComposeConfig(
        services=freeze(merged.get("services") or {}),
        networks=freeze(merged.get("networks") or {}),
        volumes=freeze(merged.get("volumes") or {}),
        secrets=freeze(merged.get("secrets") or {}),
        warnings=tuple(warnings),
        sources=tuple(sources),
    )
    problems = check(config)
    if problems:
        raise StackFileError(sorted(set(problems)))
    return config


def check(config: ComposeConfig) -> list[Problem]:
    """What is wrong with the merged config as a whole (references, required keys, cycles, files)."""
    out: list[Problem] = []

    def problem(path: KeyPath, message: str) -> None:
        out.append(config.problem(path, message))

    if not config.services:
        problem(("services",), "the stack defines no services")
    for name, svc in config.services.items():
        at: KeyPath = ("services", name)
        if not svc.get("image"):
            problem(at, "missing image (Shoal runs images; it does not build them)")
        deploy = svc.get("deploy") or {}
        if deploy.get("mode") == "global" and "replicas" in deploy:
            problem((*at, "deploy", "replicas"), "replicas can only be used with replicated mode")
        for net in svc.get("networks") or {}:
            if net != "default" and net not in config.networks:
                problem(
                    (*at, "networks", net), f"network {net!r} is not declared under the top-level networks"
                )
        for i, vol in enumerate(svc.get("volumes") or ()):
            named = _named_volume(vol)
            if named and named not in config.volumes:
                problem((*at, "volumes", i), f"volume {named!r} is not declared under the top-level volumes")
        for i, sec in enumerate(svc.get("secrets") or ()):
            src = merge.secret_source(sec)
            if src not in config.secrets:
                problem((*at, "secrets", i), f"secret {src!r} is not declared under the top-level secrets")
        for i, dep in enumerate(svc.get("depends_on") or ()):
            if dep not in config.services:
                problem((*at, "depends_on", i), f"service {dep!r} is not defined")
        for i, path in enumerate(svc.get("env_file") or ()):
            if not os.access(path, os.R_OK):
                problem((*at, "env_file", i), f"cannot read env file {path}")
    for name, sec in config.secrets.items():
        at = ("secrets", name)
        if bool(sec.get("file")) == bool(sec.get("external")):
            problem(at, "a secret needs either file: or external: true")
        elif sec.get("file") and not os.access(sec["file"], os.R_OK):
            problem((*at, "file"), f"cannot read secret file {sec['file']}")
    graph = {
        name: set(svc.get("depends_on") or ()) & set(config.services) for name, svc in config.services.items()
    }
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
        problem(("services", e.args[1][0], "depends_on"), f"dependency cycle: {cycle}")
    return out


def _named_volume(vol: Any) -> str:
    """The named volume a service volume uses ("" for binds, tmpfs and anonymous volumes)."""
    if isinstance(vol, Mapping):
        kind = vol.get("type", "volume")
        return str(vol.get("source") or "") if kind == "volume" else ""
    parts = str(vol).split(":")
    if len(parts) < 2 or parts[0].startswith(("/", ".", "~")):
        return ""
    return parts[0]


def creation_order(config: ComposeConfig) -> list[str]:
    """Service names with every service after those it depends on (ties by name)."""
    graph = {name: set(svc.get("depends_on") or ()) for name, svc in config.services.items()}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order += ready
        sorter.done(*ready)
    return order
