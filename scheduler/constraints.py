"""Placement constraints as in `docker service create --constraint`.

`node.labels.zone==eu`, `node.role!=manager`, `node.hostname==web-1`,
`node.id==...`, `node.platform.os==linux`, `node.platform.arch==x86_64`.
Parsing is strict and errors say which constraint and what was wrong.

Also the one normal form of node platforms: OS and architecture compare
case-insensitively and the kernel's architecture names equal the OCI ones
(`x86_64` is `amd64`, `aarch64` is `arm64`), whether they come from a
constraint, a `--platform` of the service, or what the node reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from api.arch import OCI_ARCH

if TYPE_CHECKING:
    from .model import NodeInfo


class ConstraintError(ValueError):
    pass


# kernel (uname -m) name -> OCI name, as agents report and images declare them
ARCH_ALIASES = OCI_ARCH  # either spelling (uname -m or GOARCH) -> GOARCH


def normalize_os(os_: str) -> str:
    return os_.lower()


def normalize_arch(arch: str) -> str:
    a = arch.lower()
    return ARCH_ALIASES.get(a, a)


def parse_platform(p: str) -> tuple[str, str]:
    """`linux/amd64` -> ("linux", "amd64") in normal form; an empty part matches any."""
    os_, _, arch = p.partition("/")
    return normalize_os(os_.strip()), normalize_arch(arch.strip())


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

    @property
    def label(self) -> str | None:
        """The label name for `node.labels.NAME`, else None."""
        return self.key[12:] if self.key.startswith("node.labels.") else None

    def wanted(self) -> str:
        """The value in the form node values are compared in (see `node_value`)."""
        if self.key == "node.platform.arch":
            return normalize_arch(self.value)
        return self.value.lower() if self.key in _CASE_INSENSITIVE else self.value

    def node_value(self, node: NodeInfo) -> str | None:
        k = self.key
        if k.startswith("node.labels."):
            return node.labels.get(k[12:])
        if k == "node.id":
            return node.id
        if k == "node.hostname":
            return node.hostname
        if k == "node.role":
            return node.role.lower()
        if k == "node.platform.os":
            return normalize_os(node.os)
        return normalize_arch(node.arch)

    def matches(self, node: NodeInfo) -> bool:
        a = self.node_value(node)
        if self.equal:
            return a is not None and a == self.wanted()
        return a is None or a != self.wanted()


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
