"""Placement of task groups onto nodes. Pure: no I/O, no clock.

For a group of identical tasks: filter the nodes once (ready, availability,
constraints, platform), then place task by task. Spread preferences form a
decision tree over label values; at each level the task goes to the branch
holding the fewest tasks of the service. Within a branch the node with the
fewest tasks of the service wins, then the fewest tasks overall; nodes where
the service failed recently rank last. Resources, host ports and the
per-node replica limit are re-checked as tasks land. Tasks that fit nowhere
stay unplaced with a reason that counts why each node was refused.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .model import NodeInfo, TaskGroup

MiB = 1 << 20


@dataclass
class Placement:
    assignments: list[tuple[str, str]] = field(default_factory=list)  # (task id, node id)
    unplaced: list[str] = field(default_factory=list)
    reason: str = ""


def _static_reason(g: TaskGroup, n: NodeInfo) -> str | None:
    if not n.ready:
        return "node not ready"
    if n.availability != "active":
        return f"node availability is {n.availability}"
    for c in g.constraints:
        if not c.matches(n):
            return f"fail constraint {c}"
    if g.platforms and not any(
        (not os_ or os_.lower() == n.os.lower()) and (not arch or arch.lower() == n.arch.lower())
        for os_, arch in g.platforms
    ):
        return "platform mismatch"
    return None


def _dynamic_reason(g: TaskGroup, n: NodeInfo) -> str | None:
    if g.reserve_memory and n.free_memory() < g.reserve_memory:
        return f"lack {g.reserve_memory / MiB:.0f} MiB memory"
    if g.reserve_cpu and n.free_cpu() < g.reserve_cpu:
        return f"lack {g.reserve_cpu / 1e9:g} CPUs"
    for p in g.host_ports:
        if p in n.host_ports:
            return f"host port {p[1]}/{p[0]} in use"
    if g.max_replicas_per_node and n.service_tasks[g.service_id] >= g.max_replicas_per_node:
        return f"max replicas per node ({g.max_replicas_per_node}) reached"
    return None


class _Leaf:
    __slots__ = ("g", "heap", "count")

    def __init__(self, g: TaskGroup, nodes: list[NodeInfo]) -> None:
        self.g = g
        svc = g.service_id
        self.heap = [self._key(n) for n in nodes]
        heapq.heapify(self.heap)
        self.count = sum(n.service_tasks[svc] for n in nodes)

    def _key(self, n: NodeInfo) -> tuple[int, int, int, str, NodeInfo]:
        svc = self.g.service_id
        return (1 if n.recent_failures[svc] else 0, n.service_tasks[svc], n.total_tasks, n.id, n)

    def place(self) -> NodeInfo | None:
        g = self.g
        heap = self.heap
        while heap:
            n = heap[0][4]
            if _dynamic_reason(g, n) is not None:
                heapq.heappop(heap)
                continue
            n.reserved_cpu += g.reserve_cpu
            n.reserved_memory += g.reserve_memory
            n.service_tasks[g.service_id] += 1
            n.total_tasks += 1
            for p in g.host_ports:
                n.host_ports.add(p)
            heapq.heapreplace(heap, self._key(n))
            self.count += 1
            return n
        return None


class _Tree:
    __slots__ = ("children", "heap", "count")

    def __init__(self, children: list[_Leaf | _Tree]) -> None:
        self.children = children
        self.heap = [(c.count, i) for i, c in enumerate(children)]
        heapq.heapify(self.heap)
        self.count = sum(c.count for c in children)

    def place(self) -> NodeInfo | None:
        heap = self.heap
        while heap:
            cnt, i = heap[0]
            n = self.children[i].place()
            if n is None:
                heapq.heappop(heap)  # branch full
                continue
            heapq.heapreplace(heap, (cnt + 1, i))
            self.count += 1
            return n
        return None


def _build(g: TaskGroup, nodes: list[NodeInfo], levels: list[str]) -> _Leaf | _Tree:
    if not levels:
        return _Leaf(g, nodes)
    label = levels[0]
    groups: dict[str, list[NodeInfo]] = defaultdict(list)
    for n in nodes:
        groups[n.labels.get(label, "")].append(n)
    return _Tree([_build(g, ns, levels[1:]) for _, ns in sorted(groups.items())])


def schedule_group(g: TaskGroup, nodes: list[NodeInfo]) -> Placement:
    """Place the tasks of `g`; mutates the nodes' counters and reservations."""
    out = Placement()
    if not g.task_ids:
        return out
    reasons: Counter[str] = Counter()
    eligible: list[NodeInfo] = []
    for n in nodes:
        r = _static_reason(g, n)
        if r is None:
            eligible.append(n)
        else:
            reasons[r] += 1
    root = _build(g, eligible, list(g.spread))
    tasks = g.task_ids
    for i, tid in enumerate(tasks):
        n = root.place()
        if n is None:
            out.unplaced = list(tasks[i:])
            break
        out.assignments.append((tid, n.id))
    if out.unplaced:
        for n in eligible:
            r = _dynamic_reason(g, n)
            if r is not None:
                reasons[r] += 1
        detail = ", ".join(f"{c} {r}" for r, c in sorted(reasons.items(), key=lambda x: (-x[1], x[0])))
        out.reason = f"no suitable node: {len(nodes)} nodes checked" + (f", {detail}" if detail else "")
    return out
