"""Placement of task groups onto nodes. Pure: no I/O, no clock.

For a group of identical tasks: run the node pipeline once (ready,
availability, constraints, platform: `filters.node_pipeline`), then place
task by task. Spread preferences form a decision tree over label values; at
each level the task goes to the branch holding the fewest tasks of the
service. Within a branch the node with the fewest tasks of the service wins,
then the fewest tasks overall; nodes where the service failed recently rank
last. The fit pipeline (resources, host ports, the per-node replica limit:
`filters.fit_pipeline`) is re-checked as tasks land. Tasks that fit nowhere
stay unplaced with a reason that counts why each node was refused.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field

from .filters import Pipeline, Reject, fit_pipeline, node_pipeline
from .model import NodeInfo, TaskGroup


@dataclass
class Placement:
    assignments: list[tuple[str, str]] = field(default_factory=list)  # (task id, node id)
    unplaced: list[str] = field(default_factory=list)
    reason: str = ""


class _Leaf:
    __slots__ = ("g", "fit", "heap", "count")

    def __init__(self, g: TaskGroup, nodes: list[NodeInfo], fit: Pipeline) -> None:
        self.g = g
        self.fit: Reject = fit.reject
        svc = g.service_id
        # Inlined _key: this runs for every eligible node of every group.
        # (.get, not [], on the Counters: a missing key costs a Python-level
        # __missing__ call.)
        self.heap = [(1 if n.recent_failures.get(svc) else 0, n.service_tasks.get(svc, 0), n.total_tasks, n.id, n)
                     for n in nodes]
        heapq.heapify(self.heap)
        self.count = sum(k[1] for k in self.heap)

    def _key(self, n: NodeInfo) -> tuple[int, int, int, str, NodeInfo]:
        svc = self.g.service_id
        return (1 if n.recent_failures.get(svc) else 0, n.service_tasks.get(svc, 0), n.total_tasks, n.id, n)

    def place(self) -> NodeInfo | None:
        g = self.g
        heap = self.heap
        fit = self.fit
        while heap:
            n = heap[0][4]
            if fit(n) is not None:
                heapq.heappop(heap)
                continue
            n.reserved_cpu += g.reserve_cpu
            n.reserved_memory += g.reserve_memory
            n.service_tasks[g.service_id] += 1
            n.total_tasks += 1
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


def _build(g: TaskGroup, nodes: list[NodeInfo], levels: list[str], fit: Pipeline) -> _Leaf | _Tree:
    if not levels:
        return _Leaf(g, nodes, fit)
    label = levels[0]
    groups: dict[str, list[NodeInfo]] = defaultdict(list)
    for n in nodes:
        groups[n.labels.get(label, "")].append(n)
    return _Tree([_build(g, ns, levels[1:], fit) for _, ns in sorted(groups.items())])


def schedule_group(g: TaskGroup, nodes: list[NodeInfo]) -> Placement:
    """Place the tasks of `g`; mutates the nodes' counters and reservations."""
    out = Placement()
    if not g.task_ids:
        return out
    static = g.node_filter if g.node_filter is not None else node_pipeline(g.constraints, g.platforms)
    fit = fit_pipeline(g)
    eligible, reasons = static.split(nodes)
    root = _build(g, eligible, list(g.spread), fit)
    tasks = g.task_ids
    for i, tid in enumerate(tasks):
        n = root.place()
        if n is None:
            out.unplaced = list(tasks[i:])
            break
        out.assignments.append((tid, n.id))
        for p in g.host_ports:  # before the next placement: its fit check must see them
            n.host_ports[p] = g.task_names.get(tid, tid)
    if out.unplaced:
        _, full = fit.split(eligible)
        reasons.update(full)
        detail = ", ".join(f"{c} {r}" for r, c in sorted(reasons.items(), key=lambda x: (-x[1], x[0])))
        out.reason = f"no suitable node: {len(nodes)} nodes checked" + (f", {detail}" if detail else "")
    return out
