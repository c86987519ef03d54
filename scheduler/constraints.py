"""Placement constraints as in `docker service create --constraint`.

`node.labels.zone==eu`, `node.role!=manager`, `node.hostname==web-1`,
`node.id==...`, `node.platform.os==linux`, `node.platform.arch==x86_64`.
Parsing is strict and errors say which constraint and what was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import NodeInfo


class ConstraintError(ValueError):
    pass


_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_CASE_INSENSITIVE = frozenset({"node.role", "node.platform.os", "node.platform.arch"})
_EXPR = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(==|!=)\s*(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str  # one of _KEYS or "node.labels.<name>"
    equal: bool
    value: str

    def __str__(self) -> str:
        return f"{self.key}{'==' if self.equal else '!='}{self.value}"

    def matches(self, node: NodeInfo) -> bool:
        k = self.key
        if k.startswith("node.labels."):
            actual: str | None = node.labels.get(k[12:])
        elif k == "node.id":
            actual = node.id
        elif k == "node.hostname":
            actual = node.hostname
        elif k == "node.role":
            actual = node.role
        elif k == "node.platform.os":
            actual = node.os
        else:
            actual = node.arch
        if k in _CASE_INSENSITIVE:
            a = actual.lower() if actual is not None else None
            v = self.value.lower()
        else:
            a, v = actual, self.value
        if self.equal:
            return a is not None and a == v
        return a is None or a != v


def parse_constraint(expr: str, where: str = "constraint") -> Constraint:
    m = _EXPR.match(expr)
    if not m:
        raise ConstraintError(
            f"{where} {expr!r}: expected KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==eu"
        )
    key, op, value = m.groups()
    if key not in _KEYS and not (key.startswith("node.labels.") and len(key) > 12):
        raise ConstraintError(
            f"{where} {expr!r}: unknown key {key!r}; use one of {', '.join(_KEYS)} or node.labels.NAME"
        )
    if not value:
        raise ConstraintError(f"{where} {expr!r}: the value is empty")
    if key == "node.role" and value.lower() not in ("manager", "worker"):
        raise ConstraintError(f"{where} {expr!r}: node.role is manager or worker")
    return Constraint(key, op == "==", value)


def parse_constraints(exprs: list[str] | tuple[str, ...]) -> list[Constraint]:
    return [parse_constraint(e, f"constraints[{i}]") for i, e in enumerate(exprs)]


def parse_spread(descriptor: str, where: str = "placement preference") -> str:
    """`spread=node.labels.zone` (or just the label key) -> the label name."""
    d = descriptor.strip()
    if d.startswith("spread="):
        d = d[7:]
    if not d.startswith("node.labels.") or len(d) <= 12:
        raise ConstraintError(f"{where} {descriptor!r}: expected spread=node.labels.NAME")
    return d[12:]
