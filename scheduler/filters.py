"""Node filters: the one pipeline that decides which nodes may run a task.

Replicated and global services, jobs and the scheduler all ask the same
question -- may a task of this service run on this node, and if not, why --
so they share these filters (the shape of Nomad's feasibility checkers).
Each filter checks one thing and names the reason it refused a node; a
`Pipeline` runs its filters in order, and the first refusal is the node's
reason, so the scheduler can tell a pending task why no node took it.

Two pipelines per task group:

- the node pipeline (`node_pipeline`): what the node *is* -- ready,
  availability active, placement constraints, platform. It holds for a whole
  pass, so the scheduler runs it once per group, and the global orchestrator
  asks it per node which nodes get a task.
- the fit pipeline (`fit_pipeline`): what the node still has *room* for --
  reserved resources, host ports, replicas per node. It changes as tasks
  land, so the scheduler re-asks it before each placement.

Placement rules are parsed once per service spec (`PlacementRules.parse`)
and kept as data; the filters are built from the parsed rules.

Pure and hot: no I/O, and `split` filters a whole node list one filter at a
time (a list comprehension per filter) rather than calling every filter per
node, which keeps 10^5 decisions a second within reach.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .constraints import (
    Constraint,
    ConstraintError,
    normalize_arch,
    normalize_os,
    parse_constraints,
    parse_platform,
)
from .model import NodeInfo, TaskGroup

MiB = 1 << 20

Reject = Callable[[NodeInfo], "str | None"]


class NodeFilter:
    """One check of a node. Subclasses implement `reject`; `keep` is the
    batch form and may be overridden where a comprehension is faster."""

    __slots__ = ()

    def reject(self, n: NodeInfo) -> str | None:
        """Why `n` may not take the task, or None if it may."""
        raise NotImplementedError

    def keep(self, nodes: list[NodeInfo], reasons: Counter[str]) -> list[NodeInfo]:
        """The nodes this filter accepts; counts the refused ones by reason."""
        kept: list[NodeInfo] = []
        reject = self.reject
        for n in nodes:
            r = reject(n)
            if r is None:
                kept.append(n)
            else:
                reasons[r] += 1
        return kept

    def __repr__(self) -> str:
        return type(self).__name__


def _count(reasons: Counter[str], reason: str, before: int, kept: list[NodeInfo]) -> list[NodeInfo]:
    if len(kept) != before:
        reasons[reason] += before - len(kept)
    return kept


# -- what a node is ----------------------------------------------------------


class NodeReady(NodeFilter):
    __slots__ = ()
    REASON = "node not ready"

    def reject(self, n: NodeInfo) -> str | None:
        return None if n.ready else self.REASON

    def keep(self, nodes: list[NodeInfo], reasons: Counter[str]) -> list[NodeInfo]:
        return _count(reasons, self.REASON, len(nodes), [n for n in nodes if n.ready])


class NodeActive(NodeFilter):
    """Availability `active`: a paused or drained node takes no new task."""

    __slots__ = ()

    def reject(self, n: NodeInfo) -> str | None:
        return None if n.availability == "active" else f"node availability is {n.availability}"

    def keep(self, nodes: list[NodeInfo], reasons: Counter[str]) -> list[NodeInfo]:
        kept = [n for n in nodes if n.availability == "active"]
        if len(kept) != len(nodes):
            for n in nodes:
                if n.availability != "active":
                    reasons[f"node availability is {n.availability}"] += 1
        return kept


class ConstraintFilter(NodeFilter):
    """One placement constraint (`node.labels.zone==eu`)."""

    __slots__ = ("constraint", "reason", "_label", "_wanted", "_equal")

    def __init__(self, c: Constraint) -> None:
        self.constraint = c
        self.reason = f"fail constraint {c}"
        self._label = c.label
        self._wanted = c.wanted()
        self._equal = c.equal

    def reject(self, n: NodeInfo) -> str | None:
        a = n.labels.get(self._label) if self._label is not None else self.constraint.node_value(n)
        if self._equal:
            ok = a is not None and a == self._wanted
        else:
            ok = a is None or a != self._wanted
        return None if ok else self.reason

    def keep(self, nodes: list[NodeInfo], reasons: Counter[str]) -> list[NodeInfo]:
        label, v = self._label, self._wanted
        if label is None:
            return NodeFilter.keep(self, nodes, reasons)
        # A missing label never equals a value (and always differs from one).
        if self._equal:
            kept = [n for n in nodes if n.labels.get(label) == v]
        else:
            kept = [n for n in nodes if n.labels.get(label) != v]
        return _count(reasons, self.reason, len(nodes), kept)

    def __repr__(self) -> str:
        return f"ConstraintFilter({self.constraint})"


class PlatformFilter(NodeFilter):
    """The node's OS/architecture is one of the service's platforms (an
    empty part matches any); compared in normal form."""

    __slots__ = ("platforms",)
    REASON = "platform mismatch"

    def __init__(self, platforms: Sequence[tuple[str, str]]) -> None:
        self.platforms = tuple((normalize_os(o), normalize_arch(a) if a else "") for o, a in platforms)

    def reject(self, n: NodeInfo) -> str | None:
        os_, arch = normalize_os(n.os), normalize_arch(n.arch)
        for want_os, want_arch in self.platforms:
            if (not want_os or want_os == os_) and (not want_arch or want_arch == arch):
                return None
        return self.REASON


# -- what a node has room for --------------------------------------------------


class ResourceFilter(NodeFilter):
    """Unreserved memory and CPU (memory is checked first)."""

    __slots__ = ("memory", "cpu", "_mem_reason", "_cpu_reason")

    def __init__(self, cpu: int, memory: int) -> None:
        self.cpu = cpu
        self.memory = memory
        self._mem_reason = f"lack {memory / MiB:.0f} MiB memory"
        self._cpu_reason = f"lack {cpu / 1e9:g} CPUs"

    def reject(self, n: NodeInfo) -> str | None:
        if self.memory and n.memory_bytes - n.reserved_memory < self.memory:
            return self._mem_reason
        if self.cpu and n.cpu_nanos - n.reserved_cpu < self.cpu:
            return self._cpu_reason
        return None


class HostPortFilter(NodeFilter):
    """Host-mode published ports (protocol, port): a node where a task
    already listens on one of them cannot take another (the reason names
    the task)."""

    __slots__ = ("ports",)

    def __init__(self, ports: Sequence[tuple[str, int]]) -> None:
        self.ports = tuple(ports)

    def reject(self, n: NodeInfo) -> str | None:
        for p in self.ports:
            holder = n.host_ports.get(p)
            if holder is not None:
                return f"host port {p[1]}/{p[0]} is in use by task {holder}"
        return None


class MaxReplicasFilter(NodeFilter):
    __slots__ = ("service_id", "limit", "reason")

    def __init__(self, service_id: str, limit: int) -> None:
        self.service_id = service_id
        self.limit = limit
        self.reason = f"max replicas per node ({limit}) reached"

    def reject(self, n: NodeInfo) -> str | None:
        return self.reason if n.service_tasks.get(self.service_id, 0) >= self.limit else None


# -- pipelines -----------------------------------------------------------------


def _accept(n: NodeInfo) -> None:
    return None


class Pipeline:
    """Filters in order; a node's reason is the first filter that refuses it."""

    __slots__ = ("filters", "reject")

    def __init__(self, filters: Sequence[NodeFilter]) -> None:
        self.filters = tuple(filters)
        # `reject` is called once per placement: bind the common shapes
        # directly rather than loop over one filter.
        self.reject: Reject
        if not self.filters:
            self.reject = _accept
        elif len(self.filters) == 1:
            self.reject = self.filters[0].reject
        else:
            self.reject = self._first_reason

    def _first_reason(self, n: NodeInfo) -> str | None:
        for f in self.filters:
            r = f.reject(n)
            if r is not None:
                return r
        return None

    def accepts(self, n: NodeInfo) -> bool:
        return self.reject(n) is None

    def split(self, nodes: Sequence[NodeInfo]) -> tuple[list[NodeInfo], Counter[str]]:
        """(the nodes every filter accepts, refused nodes counted by reason)."""
        reasons: Counter[str] = Counter()
        kept = list(nodes)
        for f in self.filters:
            if not kept:
                break
            kept = f.keep(kept, reasons)
        return kept, reasons

    def __bool__(self) -> bool:
        return bool(self.filters)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.filters))})"


def node_pipeline(constraints: Sequence[Constraint] = (),
                  platforms: Sequence[tuple[str, str]] = ()) -> Pipeline:
    """What a node must be: ready, active, every constraint, one of the platforms."""
    fs: list[NodeFilter] = [NodeReady(), NodeActive()]
    fs.extend(ConstraintFilter(c) for c in constraints)
    if platforms:
        fs.append(PlatformFilter(platforms))
    return Pipeline(fs)


def fit_pipeline(g: TaskGroup) -> Pipeline:
    """What a node must still have room for to take one more task of `g`."""
    fs: list[NodeFilter] = []
    if g.reserve_memory or g.reserve_cpu:
        fs.append(ResourceFilter(g.reserve_cpu, g.reserve_memory))
    if g.host_ports:
        fs.append(HostPortFilter(g.host_ports))
    if g.max_replicas_per_node:
        fs.append(MaxReplicasFilter(g.service_id, g.max_replicas_per_node))
    return Pipeline(fs)


@dataclass(frozen=True, slots=True)
class PlacementRules:
    """A service's placement, parsed once per spec and kept as data.

    `error` is set when the constraints do not parse; then no node is
    eligible and `nodes` refuses every node with that error."""

    constraints: tuple[Constraint, ...] = ()
    platforms: tuple[tuple[str, str], ...] = ()  # normal form; "" = any
    spread: tuple[str, ...] = ()  # label names, outermost first
    max_replicas: int = 0
    error: str | None = None
    nodes: Pipeline = field(default_factory=lambda: node_pipeline())

    @classmethod
    def parse(cls, constraints: Sequence[str] = (), platforms: Sequence[str] = (),
              preferences: Sequence[str] = (), max_replicas: int = 0) -> PlacementRules:
        plats = tuple(parse_platform(p) for p in platforms)
        spread = tuple(p.removeprefix("node.labels.") for p in preferences)
        try:
            cons = tuple(parse_constraints(list(constraints)))
        except ConstraintError as e:
            err = f"invalid placement: {e}"
            return cls((), plats, spread, max_replicas, err, Pipeline([_Refuse(err)]))
        return cls(cons, plats, spread, max_replicas, None, node_pipeline(cons, plats))

    def group(self, service_id: str, task_ids: list[str], *, reserve_cpu: int = 0, reserve_memory: int = 0,
              host_ports: Sequence[tuple[str, int]] = (), task_names: dict[str, str] | None = None) -> TaskGroup:
        """The scheduler's input for these tasks of the service."""
        return TaskGroup(service_id=service_id, task_ids=task_ids, constraints=list(self.constraints),
                         spread=list(self.spread), reserve_cpu=reserve_cpu, reserve_memory=reserve_memory,
                         max_replicas_per_node=self.max_replicas, host_ports=list(host_ports),
                         task_names=dict(task_names or {}), platforms=list(self.platforms), node_filter=self.nodes)


class _Refuse(NodeFilter):
    """Every node, for one reason (rules that could not be parsed)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def reject(self, n: NodeInfo) -> str | None:
        return self.reason
