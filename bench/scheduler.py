#!/usr/bin/env python3
"""Pure scheduler throughput: 100,000 tasks onto 5,000 nodes.

100 services of 1,000 replicas each, every service with a constraint
(node.labels.tier==web, 90% of nodes match) and a spread preference over
10 zones, reservations of 64 MiB and 0.05 CPU. Prints decisions/s (goal:
>= 20,000/s; SwarmKit placed 100k tasks on 1k nodes at ~16.5k/s).

    python3 bench/scheduler.py [--nodes 5000] [--tasks 100000] [--services 100]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scheduler.constraints import parse_constraints  # noqa: E402
from scheduler.model import NodeInfo, TaskGroup  # noqa: E402
from scheduler.scheduler import schedule_group  # noqa: E402

MiB = 1 << 20


def make_nodes(n: int, rng: random.Random) -> list[NodeInfo]:
    return [
        NodeInfo(
            id=f"node{i:05d}", hostname=f"host{i}",
            labels={"zone": f"z{i % 10}", "tier": "web" if rng.random() < 0.9 else "db"},
            cpu_nanos=16 * 10**9, memory_bytes=64 << 30,
        )
        for i in range(n)
    ]


def run(n_nodes: int, n_tasks: int, n_services: int, seed: int) -> tuple[float, int, list[NodeInfo]]:
    rng = random.Random(seed)
    nodes = make_nodes(n_nodes, rng)
    cons = parse_constraints(["node.labels.tier==web"])
    per = n_tasks // n_services
    groups = [
        TaskGroup(f"svc{s}", [f"svc{s}.{i}" for i in range(per)], constraints=cons, spread=["zone"],
                  reserve_cpu=5 * 10**7, reserve_memory=64 * MiB)
        for s in range(n_services)
    ]
    placed = 0
    t0 = time.perf_counter()
    for g in groups:
        placed += len(schedule_group(g, nodes).assignments)
    return time.perf_counter() - t0, placed, nodes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rates = []
    for r in range(a.rounds):
        secs, placed, nodes = run(a.nodes, a.tasks, a.services, r)
        rates.append(placed / secs)
        print(f"round {r + 1}: {placed} tasks placed on {a.nodes} nodes in {secs:.2f} s "
              f"= {placed / secs:,.0f} decisions/s")
    per_zone = Counter(n.labels["zone"] for n in nodes for _ in range(n.total_tasks))
    spread = max(per_zone.values()) - min(per_zone.values())
    print(f"median: {statistics.median(rates):,.0f} decisions/s "
          f"(goal >= 20,000/s; SwarmKit reference ~16,500/s: ratio {statistics.median(rates) / 16500:.1f}x); "
          f"zone imbalance {spread} tasks")


if __name__ == "__main__":
    main()
