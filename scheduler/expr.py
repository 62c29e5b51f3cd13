"""Constraint, affinity and placement-preference expressions, in both Swarm syntaxes.

SwarmKit syntax (``docker service create --constraint``): ``<key> == <value>`` or ``<key> != <value>`` with
keys ``node.id``, ``node.hostname``, ``node.role``, ``node.platform.os``, ``node.platform.arch``,
``node.labels.<k>`` and ``engine.labels.<k>``; values compare exactly, ignoring case.

Classic Swarm syntax: ``constraint:<key><op><value>`` and ``affinity:<key><op><value>`` where ``<op>`` is
``==`` or ``!=``, made *soft* by a ``~`` after it (``==~``, ``!=~``: the expression is dropped when no node
satisfies it). Values are exact strings, shell-style globs (``us-*``, ``node[12]``) or regular expressions
between slashes (``/node[12]/``, ``/(?i)NODE1/``), which match anywhere in the value unless anchored.
Constraint keys are ``node`` (id or hostname), ``storagedriver``, ``kernelversion``, ``operatingsystem``
or any label (node labels first, then engine labels). Affinity keys are ``container`` (names of the
containers on the node), ``image`` (images on the node) or any container label.

A node that lacks a label is treated as having it set to the empty string, as both Swarms do: ``==``
fails and ``!=`` passes. Every parse error raises :class:`InvalidExpression` naming the expression.
Parsing is cached, so the expressions of a service are compiled once.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass

from scheduler.errors import InvalidExpression
from scheduler.types import NodeSnapshot

# --- node attributes an expression can look at -----------------------------------------------------
ATTR_ID = "id"
ATTR_HOSTNAME = "hostname"
ATTR_ROLE = "role"
ATTR_OS = "os"
ATTR_ARCH = "arch"
ATTR_NODE = "node"  # classic: id or hostname
ATTR_STORAGE_DRIVER = "storagedriver"
ATTR_KERNEL_VERSION = "kernelversion"
ATTR_OPERATING_SYSTEM = "operatingsystem"
NODE_LABEL = "label:"  # prefix: node label
ENGINE_LABEL = "engine:"  # prefix: engine label
ANY_LABEL = "anylabel:"  # prefix, classic: node label, else engine label


def attribute_values(node: NodeSnapshot, attribute: str) -> tuple[str, ...]:
    """The values of ``attribute`` on ``node``; a missing label reads as ``""``."""
    if attribute.startswith(NODE_LABEL):
        return (node.labels.get(attribute[len(NODE_LABEL) :], ""),)
    if attribute.startswith(ENGINE_LABEL):
        return (node.engine_labels.get(attribute[len(ENGINE_LABEL) :], ""),)
    if attribute.startswith(ANY_LABEL):
        key = attribute[len(ANY_LABEL) :]
        value = node.labels.get(key)
        return (value if value is not None else node.engine_labels.get(key, ""),)
    if attribute == ATTR_NODE:
        return (node.id, node.hostname)
    simple = {
        ATTR_ID: node.id,
        ATTR_HOSTNAME: node.hostname,
        ATTR_ROLE: node.role.value,
        ATTR_OS: node.platform.os,
        ATTR_ARCH: node.platform.arch,
        ATTR_STORAGE_DRIVER: node.storage_driver,
        ATTR_KERNEL_VERSION: node.kernel_version,
        ATTR_OPERATING_SYSTEM: node.operating_system,
    }
    return (simple[attribute],)


# --- value matching --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """One compiled value: an exact string (``literal``, ignoring case when ``fold``) or a pattern."""

    literal: str | None = None
    fold: bool = False
    pattern: re.Pattern[str] | None = None

    def __call__(self, value: str) -> bool:
        if self.pattern is not None:
            return self.pattern.search(value) is not None
        if self.fold:
            return value.casefold() == self.literal
        return value == self.literal


def _literal(value: str, *, fold: bool) -> ValueMatcher:
    return ValueMatcher(literal=value.casefold() if fold else value, fold=fold)


def _classic_value(expression: str, value: str) -> ValueMatcher:
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        try:
            return ValueMatcher(pattern=re.compile(value[1:-1]))
        except re.error as exc:
            raise InvalidExpression(expression, f"bad regular expression: {exc}") from None
    if any(c in value for c in "*?["):
        return ValueMatcher(pattern=re.compile(fnmatch.translate(value)))
    return _literal(value, fold=False)


# --- parsed expressions ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Constraint:
    """A parsed constraint; ``negate`` for ``!=``, ``soft`` for classic ``~``."""

    expression: str
    attribute: str
    negate: bool
    soft: bool
    matcher: ValueMatcher

    def matches(self, values: tuple[str, ...]) -> bool:
        """Whether a node whose attribute has ``values`` satisfies the constraint."""
        hit = False
        for value in values:
            if self.matcher(value):
                hit = True
                break
        return hit != self.negate

    def check(self, node: NodeSnapshot) -> bool:
        """Whether ``node`` satisfies the constraint."""
        return self.matches(attribute_values(node, self.attribute))


AFFINITY_CONTAINER = "container"
AFFINITY_IMAGE = "image"
AFFINITY_LABEL = "label"


@dataclass(frozen=True, slots=True)
class Affinity:
    """A parsed affinity: to containers by name, to images, or to containers by label (``label``)."""

    expression: str
    kind: str
    label: str
    negate: bool
    soft: bool
    matcher: ValueMatcher


@dataclass(frozen=True, slots=True)
class Preference:
    """A parsed placement preference: spread the service's tasks over the values of ``attribute``."""

    expression: str
    attribute: str


# --- parsing ---------------------------------------------------------------------------------------
_OPERATORS = ("==", "!=")
_SWARMKIT_KEY = re.compile(r"^[a-z_][a-z0-9\-_.]+$", re.IGNORECASE)
_SWARMKIT_VALUE = re.compile(r"^[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+$", re.IGNORECASE)
_CLASSIC_KEY = re.compile(r"^[a-z_][a-z0-9\-_./]*$", re.IGNORECASE)
_SWARMKIT_KEYS = {
    "node.id": ATTR_ID,
    "node.hostname": ATTR_HOSTNAME,
    "node.role": ATTR_ROLE,
    "node.platform.os": ATTR_OS,
    "node.platform.arch": ATTR_ARCH,
}
_CLASSIC_KEYS = {
    "node": ATTR_NODE,
    "storagedriver": ATTR_STORAGE_DRIVER,
    "kernelversion": ATTR_KERNEL_VERSION,
    "operatingsystem": ATTR_OPERATING_SYSTEM,
}


def _split(expression: str, text: str) -> tuple[str, bool, str]:
    """Split ``key==value`` / ``key!=value`` at the first operator; returns (key, negate, value)."""
    found = [(text.find(op), op) for op in _OPERATORS if op in text]
    if not found:
        raise InvalidExpression(expression, "expected one of the operators ==, !=")
    at, op = min(found)
    key, value = text[:at].strip(), text[at + len(op) :].strip()
    if not key:
        raise InvalidExpression(expression, "missing key")
    return key, op == "!=", value


def _has_prefix(text: str, prefix: str) -> bool:
    return text[: len(prefix)].lower() == prefix


def _label_attribute(expression: str, key: str) -> str | None:
    for prefix, attr in (("node.labels.", NODE_LABEL), ("engine.labels.", ENGINE_LABEL)):
        if _has_prefix(key, prefix):
            label = key[len(prefix) :]
            if not label:
                raise InvalidExpression(expression, f"missing label name after {prefix!r}")
            return attr + label
    return None


def _parse_swarmkit(expression: str) -> Constraint:
    key, negate, value = _split(expression, expression)
    if not _SWARMKIT_KEY.match(key):
        raise InvalidExpression(expression, f"invalid key {key!r}")
    if not value:
        raise InvalidExpression(expression, "missing value")
    if not _SWARMKIT_VALUE.match(value):
        raise InvalidExpression(expression, f"invalid value {value!r}")
    attribute = _label_attribute(expression, key) or _SWARMKIT_KEYS.get(key.lower())
    if attribute is None:
        raise InvalidExpression(
            expression,
            f"unknown key {key!r} (expected node.id, node.hostname, node.role, node.platform.os, "
            "node.platform.arch, node.labels.<key> or engine.labels.<key>; classic syntax needs the "
            "'constraint:' prefix)",
        )
    return Constraint(expression, attribute, negate, False, _literal(value, fold=True))


def _classic_parts(expression: str, body: str) -> tuple[str, bool, bool, ValueMatcher]:
    key, negate, value = _split(expression, body)
    if not _CLASSIC_KEY.match(key):
        raise InvalidExpression(expression, f"invalid key {key!r}")
    soft = value.startswith("~")
    if soft:
        value = value[1:].strip()
    if not value:
        raise InvalidExpression(expression, "missing value")
    return key, negate, soft, _classic_value(expression, value)


def _parse_classic(expression: str, text: str) -> Constraint:
    key, negate, soft, matcher = _classic_parts(expression, text[len("constraint:") :])
    attribute = _CLASSIC_KEYS.get(key.lower()) or ANY_LABEL + key
    return Constraint(expression, attribute, negate, soft, matcher)


@functools.lru_cache(maxsize=4096)
def parse_constraint(expression: str) -> Constraint:
    """Parse one constraint in either syntax (classic when it starts with ``constraint:``)."""
    text = expression.strip()
    if _has_prefix(text, "constraint:"):
        return _parse_classic(expression, text)
    return _parse_swarmkit(expression)


@functools.lru_cache(maxsize=4096)
def parse_affinity(expression: str) -> Affinity:
    """Parse one classic affinity, with or without the ``affinity:`` prefix."""
    body = expression.strip()
    if _has_prefix(body, "affinity:"):
        body = body[len("affinity:") :]
    key, negate, soft, matcher = _classic_parts(expression, body)
    lowered = key.lower()
    if lowered in (AFFINITY_CONTAINER, AFFINITY_IMAGE):
        return Affinity(expression, lowered, "", negate, soft, matcher)
    return Affinity(expression, AFFINITY_LABEL, key, negate, soft, matcher)


@functools.lru_cache(maxsize=1024)
def parse_preference(expression: str) -> Preference:
    """Parse ``spread=node.labels.<key>`` (or ``spread=engine.labels.<key>``)."""
    kind, _, descriptor = expression.partition("=")
    if kind.strip().lower() != "spread":
        raise InvalidExpression(expression, "only 'spread=<descriptor>' preferences are supported")
    descriptor = descriptor.strip()
    attribute = _label_attribute(expression, descriptor)
    if attribute is None:
        raise InvalidExpression(
            expression, "spread descriptor must be node.labels.<key> or engine.labels.<key>"
        )
    return Preference(expression, attribute)
