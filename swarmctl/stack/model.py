"""The loader's immutable results: the merged Compose config, and the plan of Shoal objects for one stack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from api.objects import NetworkSpec, SecretSpec, ServiceSpec, VolumeSpec
from swarmctl.stack.errors import Problem
from swarmctl.stack.source import KeyPath, SourceFile

#: The label Docker puts on everything a stack creates; ``stack ls``/``rm`` find objects by it.
NAMESPACE_LABEL = "com.docker.stack.namespace"
#: The image as the stack file names it (Docker's label).
IMAGE_LABEL = "com.docker.stack.image"
#: A digest of the service spec a deploy wrote: an unchanged file leaves the service untouched.
HASH_LABEL = "com.shoal.stack.config-hash"


def freeze(value: Any) -> Any:
    """Plain data made immutable: dicts become read-only mappings, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class ComposeConfig:
    """Every file merged, interpolated, validated and normalised; read-only."""

    services: Mapping[str, Mapping[str, Any]]
    networks: Mapping[str, Mapping[str, Any]]
    volumes: Mapping[str, Mapping[str, Any]]
    secrets: Mapping[str, Mapping[str, Any]]
    #: Things the user should know that did not stop the load (ignored keys, unset variables).
    warnings: tuple[str, ...] = ()
    #: The files, in merge order, for locating problems found later.
    sources: tuple[SourceFile, ...] = field(default=(), repr=False)

    def problem(self, path: KeyPath, message: str) -> Problem:
        """A problem at ``path`` of the merged config, located in the last file that set it."""
        for src in reversed(self.sources):
            if path[:2] in src.lines:
                return src.problem(path, message)
        return self.sources[0].problem(path, message) if self.sources else Problem("", 0, "", message)


@dataclass(frozen=True)
class StackNetwork:
    """A network of the stack; ``spec`` is None for an external one (it must exist)."""

    name: str
    spec: NetworkSpec | None


@dataclass(frozen=True)
class StackVolume:
    name: str
    spec: VolumeSpec | None


@dataclass(frozen=True)
class StackSecret:
    name: str
    spec: SecretSpec | None


@dataclass(frozen=True)
class StackService:
    """One service: its full name (``<stack>_<service>``) and spec; secret ids are filled in at deploy."""

    name: str
    spec: ServiceSpec
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class StackPlan:
    """What deploying a stack means in Shoal objects; services in creation order (depends_on first)."""

    name: str
    networks: tuple[StackNetwork, ...]
    volumes: tuple[StackVolume, ...]
    secrets: tuple[StackSecret, ...]
    services: tuple[StackService, ...]
    warnings: tuple[str, ...] = ()

    def service_names(self) -> Sequence[str]:
        return [s.name for s in self.services]
