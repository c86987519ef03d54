"""The pure scheduler: constraints, filters, spread, balance, reasons."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.constraints import ConstraintError, parse_constraint, parse_constraints, parse_spread
from scheduler.model import NodeInfo, TaskGroup
from scheduler.scheduler import schedule_group

MiB = 1 << 20


def nodes(n: int, **kw: object) -> list[NodeInfo]:
    return [NodeInfo(id=f"n{i:03d}", hostname=f"host{i}", **kw) for i in range(n)]  # type: ignore[arg-type]


def group(k: int, svc: str = "s1", **kw: object) -> TaskGroup:
    return TaskGroup(svc, [f"{svc}.t{i}" for i in range(k)], **kw)  # type: ignore[arg-type]


def per_node(p: object) -> Counter[str]:
    return Counter(n for _, n in p.assignments)  # type: ignore[attr-defined]


def test_parse_constraints() -> None:
    c = parse_constraint("node.labels.zone == eu")
    assert (c.key, c.equal, c.value) == ("node.labels.zone", True, "eu")
    assert parse_constraint("node.role!=manager").equal is False
    for bad, needle in [
        ("zone=eu", "expected KEY==VALUE"),
        ("node.color==red", "unknown key"),
        ("node.labels.zone==", "value is empty"),
        ("node.role==boss", "manager or worker"),
        ("node.labels.==x", "unknown key"),
    ]:
        with pytest.raises(ConstraintError, match=needle):
            parse_constraint(bad)
    with pytest.raises(ConstraintError, match=r"constraints\[1\]"):
        parse_constraints(["node.role==worker", "bogus"])
    assert parse_spread("spread=node.labels.zone") == "zone"
    with pytest.raises(ConstraintError):
        parse_spread("spread=node.hostname")


@given(st.text(max_size=60))
@settings(max_examples=300)
def test_constraint_parser_only_raises_its_own_error(s: str) -> None:
    try:
        parse_constraint(s)
    except ConstraintError:
        pass


def test_spreads_evenly_by_fewest_tasks() -> None:
    ns = nodes(4)
    p = schedule_group(group(10), ns)
    assert not p.unplaced
    assert sorted(per_node(p).values()) == [2, 2, 3, 3]
    assert sum(n.total_tasks for n in ns) == 10


def test_fewest_tasks_overall_breaks_ties() -> None:
    ns = nodes(3)
    ns[0].total_tasks = 5
    ns[1].total_tasks = 1
    p = schedule_group(group(1), ns)
    assert p.assignments[0][1] == "n002"


def test_recent_failures_rank_last() -> None:
    ns = nodes(2)
    ns[0].recent_failures["s1"] = 1
    p = schedule_group(group(1), ns)
    assert p.assignments[0][1] == "n001"


def test_constraints_and_spread_preference() -> None:
    ns = nodes(9)
    for i, n in enumerate(ns):
        n.labels = {"zone": ["a", "b", "c"][i % 3], "tier": "web" if i < 6 else "db"}
    g = group(12, constraints=parse_constraints(["node.labels.tier==web"]), spread=["zone"])
    p = schedule_group(g, ns)
    assert not p.unplaced
    by_zone = Counter(ns[int(nid[1:])].labels["zone"] for _, nid in p.assignments)
    assert by_zone == {"a": 4, "b": 4, "c": 4}
    assert all(ns[int(nid[1:])].labels["tier"] == "web" for _, nid in p.assignments)


def test_spread_counts_existing_tasks() -> None:
    ns = nodes(4)
    for i, n in enumerate(ns):
        n.labels = {"zone": "a" if i < 2 else "b"}
    ns[0].service_tasks["s1"] = 4
    ns[0].total_tasks = 4
    p = schedule_group(group(4, spread=["zone"]), ns)
    zones = Counter(ns[int(nid[1:])].labels["zone"] for _, nid in p.assignments)
    assert zones == {"b": 4}


def test_unplaceable_tasks_stay_pending_with_reason() -> None:
    ns = nodes(5, memory_bytes=1024 * MiB)
    for n in ns[:3]:
        n.labels = {"zone": "us"}
    for n in ns[3:]:
        n.labels = {"zone": "eu"}
        n.reserved_memory = 768 * MiB
    g = group(2, constraints=parse_constraints(["node.labels.zone==eu"]), reserve_memory=512 * MiB)
    p = schedule_group(g, ns)
    assert p.unplaced == ["s1.t0", "s1.t1"] and not p.assignments
    assert p.reason == (
        "no suitable node: 5 nodes checked, 3 fail constraint node.labels.zone==eu, 2 lack 512 MiB memory"
    )


def test_resources_are_reserved_as_tasks_land() -> None:
    ns = nodes(2, memory_bytes=1024 * MiB, cpu_nanos=2 * 10**9)
    p = schedule_group(group(5, reserve_memory=400 * MiB), ns)
    assert len(p.assignments) == 4 and p.unplaced == ["s1.t4"]
    assert "lack 400 MiB memory" in p.reason
    p = schedule_group(group(3, "s2", reserve_cpu=10**9), nodes(1, cpu_nanos=2 * 10**9))
    assert len(p.assignments) == 2 and "lack 1 CPUs" in p.reason


def test_host_ports_and_max_replicas_and_availability() -> None:
    ns = nodes(3)
    ns[2].availability = "drain"
    g = group(3, host_ports=[("tcp", 80)])
    g.task_names = {tid: f"web.{i + 1}" for i, tid in enumerate(g.task_ids)}
    p = schedule_group(g, ns)
    assert len(p.assignments) == 2 and p.unplaced == [g.task_ids[2]]
    # Each placed task now holds the port on its node, and the reason names it.
    assert {ns[0].host_ports[("tcp", 80)], ns[1].host_ports[("tcp", 80)]} == {"web.1", "web.2"}
    assert "host port 80/tcp is in use by task web.1" in p.reason
    assert "host port 80/tcp is in use by task web.2" in p.reason
    assert "node availability is drain" in p.reason
    p = schedule_group(group(5, "s9", max_replicas_per_node=2), nodes(2))
    assert len(p.assignments) == 4 and "max replicas per node (2) reached" in p.reason


def test_platform_and_readiness() -> None:
    ns = nodes(3)
    ns[0].arch = "aarch64"
    ns[1].ready = False
    p = schedule_group(group(2, platforms=[("linux", "aarch64")], max_replicas_per_node=1), ns)
    assert [n for _, n in p.assignments] == ["n000"] and len(p.unplaced) == 1
    assert "node not ready" in p.reason and "platform mismatch" in p.reason
