"""The node-filter pipeline: each filter's reason, order, and the batch form
agreeing with the per-node one."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.constraints import normalize_arch, parse_constraint, parse_constraints, parse_platform
from scheduler.filters import (
    ConstraintFilter,
    HostPortFilter,
    MaxReplicasFilter,
    NodeActive,
    NodeReady,
    Pipeline,
    PlacementRules,
    PlatformFilter,
    ResourceFilter,
    fit_pipeline,
    node_pipeline,
)
from scheduler.model import NodeInfo, TaskGroup

MiB = 1 << 20


def test_each_filter_names_its_reason() -> None:
    n = NodeInfo(id="n1", hostname="h1", labels={"zone": "eu"}, cpu_nanos=10**9, memory_bytes=256 * MiB,
                 host_ports={("tcp", 80): "web.2"})
    n.service_tasks["s"] = 2
    assert NodeReady().reject(n) is None and NodeActive().reject(n) is None
    assert NodeReady().reject(NodeInfo(id="x", ready=False)) == "node not ready"
    assert NodeActive().reject(NodeInfo(id="x", availability="pause")) == "node availability is pause"
    assert ConstraintFilter(parse_constraint("node.labels.zone==us")).reject(n) == \
        "fail constraint node.labels.zone==us"
    assert ConstraintFilter(parse_constraint("node.labels.zone!=us")).reject(n) is None
    assert ConstraintFilter(parse_constraint("node.labels.rack!=r1")).reject(n) is None  # no label: differs
    assert ConstraintFilter(parse_constraint("node.labels.rack==r1")).reject(n) is not None
    assert PlatformFilter([("windows", "")]).reject(n) == "platform mismatch"
    assert ResourceFilter(cpu=0, memory=512 * MiB).reject(n) == "lack 512 MiB memory"
    assert ResourceFilter(cpu=2 * 10**9, memory=0).reject(n) == "lack 2 CPUs"
    assert ResourceFilter(cpu=10**9, memory=256 * MiB).reject(n) is None
    assert HostPortFilter([("udp", 80), ("tcp", 80)]).reject(n) == "host port 80/tcp is in use by task web.2"
    assert HostPortFilter([("udp", 80)]).reject(n) is None
    assert MaxReplicasFilter("s", 2).reject(n) == "max replicas per node (2) reached"
    assert MaxReplicasFilter("other", 1).reject(n) is None


def test_pipeline_reports_the_first_refusal() -> None:
    p = node_pipeline(parse_constraints(["node.labels.zone==eu", "node.role==manager"]), [("linux", "arm64")])
    down = NodeInfo(id="a", ready=False, availability="drain")
    assert p.reject(down) == "node not ready"
    assert p.reject(NodeInfo(id="b", availability="drain")) == "node availability is drain"
    assert p.reject(NodeInfo(id="c")) == "fail constraint node.labels.zone==eu"
    assert p.reject(NodeInfo(id="d", labels={"zone": "eu"})) == "fail constraint node.role==manager"
    assert p.reject(NodeInfo(id="e", labels={"zone": "eu"}, role="manager")) == "platform mismatch"
    ok = NodeInfo(id="f", labels={"zone": "eu"}, role="Manager", arch="AArch64")
    assert p.reject(ok) is None and p.accepts(ok)
    assert Pipeline([]).reject(down) is None and not Pipeline([])


def test_platforms_and_constraints_compare_in_normal_form() -> None:
    assert parse_platform("Linux/X86_64") == ("linux", "amd64")
    assert parse_platform("/arm64") == ("", "arm64")
    assert normalize_arch("aarch64") == normalize_arch("ARM64") == "arm64"
    n = NodeInfo(id="n", os="Linux", arch="x86_64", role="worker")
    for expr in ("node.platform.os==linux", "node.platform.arch==AMD64", "node.platform.arch==x86_64",
                 "node.role==WORKER"):
        c = parse_constraint(expr)
        assert c.matches(n) and ConstraintFilter(c).reject(n) is None, expr
    assert not parse_constraint("node.hostname==N").matches(NodeInfo(id="n", hostname="n"))  # names are exact
    assert PlatformFilter([("LINUX", "amd64")]).reject(n) is None


def test_placement_rules_parse_once_and_carry_their_error() -> None:
    r = PlacementRules.parse(["node.labels.zone==eu"], ["linux/x86_64"], ["node.labels.zone"], 2)
    assert r.error is None and r.platforms == (("linux", "amd64"),) and r.spread == ("zone",)
    g = r.group("s", ["t1"], reserve_memory=MiB)
    assert g.node_filter is r.nodes and g.max_replicas_per_node == 2 and g.reserve_memory == MiB
    bad = PlacementRules.parse(["node.labels.zone==eu", "nope"])
    assert bad.error is not None and bad.error.startswith("invalid placement: constraints[1] 'nope'")
    assert bad.nodes.reject(NodeInfo(id="n", labels={"zone": "eu"})) == bad.error


def test_fit_pipeline_holds_only_what_the_group_asks_for() -> None:
    assert not fit_pipeline(TaskGroup("s", ["t"]))
    p = fit_pipeline(TaskGroup("s", ["t"], reserve_cpu=1, host_ports=[("tcp", 1)], max_replicas_per_node=1))
    assert [type(f).__name__ for f in p.filters] == ["ResourceFilter", "HostPortFilter", "MaxReplicasFilter"]


_label = st.sampled_from(["a", "b", "c"])
_node = st.builds(
    NodeInfo,
    id=st.text("xyz", min_size=1, max_size=3),
    hostname=st.sampled_from(["h1", "h2"]),
    role=st.sampled_from(["worker", "manager", "Manager"]),
    labels=st.dictionaries(st.sampled_from(["zone", "rack"]), _label, max_size=2),
    os=st.sampled_from(["linux", "Linux", "windows"]),
    arch=st.sampled_from(["x86_64", "amd64", "arm64", "aarch64"]),
    ready=st.booleans(),
    availability=st.sampled_from(["active", "pause", "drain"]),
)
_constraint = st.builds(
    lambda k, op, v: f"{k}{op}{v}",
    st.sampled_from(["node.labels.zone", "node.labels.rack", "node.role", "node.platform.os",
                     "node.platform.arch", "node.hostname"]),
    st.sampled_from(["==", "!="]),
    st.sampled_from(["a", "b", "worker", "manager", "linux", "amd64", "X86_64", "h1"]),
)


@given(st.lists(_node, max_size=12), st.lists(_constraint, max_size=3),
       st.lists(st.sampled_from(["linux/amd64", "linux/", "/arm64", "windows/amd64"]), max_size=2))
@settings(max_examples=150, deadline=None)
def test_batch_split_agrees_with_per_node_reject(nodes: list[NodeInfo], cons: list[str], plats: list[str]) -> None:
    r = PlacementRules.parse(cons, plats)
    kept, reasons = r.nodes.split(nodes)
    assert kept == [n for n in nodes if r.nodes.reject(n) is None]
    expected = Counter(x for x in (r.nodes.reject(n) for n in nodes) if x is not None)
    assert reasons == expected
