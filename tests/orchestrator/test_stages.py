"""The stages of a reconciliation pass: create (NEW), allocate (NEW ->
PENDING through the allocator hook), schedule (PENDING -> ASSIGNED), and
the node filters global and replicated services share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from api.objects import (
    NetworkAttachment,
    Network,
    NetworkSpec,
    Node,
    NodeAvailability,
    NodeDescription,
    NodeSpec,
    NodeState,
    NodeStatus,
    Placement,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    Task,
    TaskState,
    TaskStatus,
    evolve,
)
from manager.orchestrator.allocate import Allocation, NoAllocation
from manager.orchestrator.placement import PlacementCache
from manager.orchestrator.reconcile import Pass, plan
from manager.store import Create, Update
from tests.orchestrator.test_reconcile import Cluster, mknode, mkservice

ATT = (NetworkAttachment(network_id="net1", addresses=("10.0.0.2/24",)),)


class Recording:
    """An allocator that attaches every task to network `net1`, or makes
    the tasks it is told to refuse wait; records the tasks it was given
    (passes with none, where it may allocate networks, are not recorded)."""

    def __init__(self) -> None:
        self.seen: list[list[Task]] = []
        self.refuse: str | None = None  # reason, or None to allocate
        self.ops: list[Any] = []

    def allocate(self, view: Any, tasks: Sequence[Task], now: float) -> Allocation:
        if tasks:
            self.seen.append(list(tasks))
        if self.refuse is not None:
            return Allocation(waiting={t.id: self.refuse for t in tasks}, ops=self.ops)
        return Allocation(allocated=[evolve(t, networks=ATT) for t in tasks], ops=self.ops if tasks else [])


def step(c: Cluster, allocator: Any = None, placements: PlacementCache | None = None) -> Pass:
    p = plan(c.store.view(), c.now, allocator=allocator, placements=placements)
    if p.ops:
        c.tx(*p.ops)
    return p


def node(id: str, os: str = "linux", arch: str = "amd64", **labels: str) -> Node:
    return Node(id=id, spec=NodeSpec(labels=labels),
                description=NodeDescription(hostname=id, os=os, arch=arch, nano_cpus=2 * 10**9,
                                            memory_bytes=1 << 32),
                status=NodeStatus(state=NodeState.READY))


def test_a_new_task_goes_new_pending_assigned_in_one_pass() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", mkservice("web", 2)))
    alloc = Recording()
    p = step(c, alloc)
    # The allocator was given the new tasks while NEW ...
    assert [t.status.state for t in alloc.seen[0]] == [TaskState.NEW, TaskState.NEW]
    # ... and each is written once, created directly in its final state, with
    # what the allocator gave it.
    assert len(p.ops) == 2 and all(isinstance(op, Create) for op in p.ops)
    ts = c.tasks("web")
    assert [t.status.state for t in ts] == [TaskState.ASSIGNED, TaskState.ASSIGNED]
    assert sorted(t.node_id for t in ts) == ["n1", "n2"]
    assert all(t.networks == ATT for t in ts)
    assert step(c, alloc).ops == [] and len(alloc.seen) == 1  # nothing left to allocate


def test_allocated_tasks_that_fit_nowhere_stay_pending_with_the_schedulers_reason() -> None:
    c = Cluster(mknode("n1", zone="us"))
    c.tx(Create("services", mkservice("eu", 1, placement=Placement(constraints=("node.labels.zone==eu",)))))
    alloc = Recording()
    step(c, alloc)
    (t,) = c.tasks("eu")
    assert t.status.state == TaskState.PENDING and t.networks == ATT
    assert t.status.message == "no suitable node: 1 nodes checked, 1 fail constraint node.labels.zone==eu"
    # Already PENDING: the next passes only retry scheduling, without allocating again or rewriting it.
    assert step(c, alloc).ops == [] and len(alloc.seen) == 1
    c.tx(Create("nodes", mknode("n2", zone="eu")))
    step(c, alloc)
    (t,) = c.tasks("eu")
    assert (t.status.state, t.node_id) == (TaskState.ASSIGNED, "n2") and len(alloc.seen) == 1


def test_a_refusing_allocator_keeps_tasks_new_with_its_reason() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("web", 2)))
    alloc = Recording()
    alloc.refuse = "no address left in network net1 (10.0.0.0/30)"
    step(c, alloc)
    ts = c.tasks("web")
    assert [(t.status.state, t.node_id, t.status.message) for t in ts] == [(TaskState.NEW, "", alloc.refuse)] * 2
    # Still refused: asked again, but nothing is rewritten (the loop must not spin).
    assert step(c, alloc).ops == [] and len(alloc.seen) == 2
    # Served at last: allocated and scheduled in the same pass.
    alloc.refuse = None
    step(c, alloc)
    assert [(t.status.state, t.node_id) for t in c.tasks("web")] == [(TaskState.ASSIGNED, "n1")] * 2


def test_tasks_the_allocator_forgets_wait_and_strangers_are_refused() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("web", 1)))

    class Forgetful:
        def allocate(self, view: Any, tasks: Sequence[Task], now: float) -> Allocation:
            return Allocation()

    step(c, Forgetful())
    (t,) = c.tasks("web")
    assert (t.status.state, t.status.message) == (TaskState.NEW, "waiting for allocation")

    class Stranger:
        def allocate(self, view: Any, tasks: Sequence[Task], now: float) -> Allocation:
            return Allocation(allocated=[evolve(tasks[0], id="not-asked")])

    with pytest.raises(ValueError, match="returned task not-asked, which it was not given"):
        plan(c.store.view(), c.now, allocator=Stranger())


def test_allocator_writes_are_committed_with_the_pass_ahead_of_its_tasks() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("web", 1)))
    alloc = Recording()
    alloc.ops = [Create("networks", Network(id="net1", spec=NetworkSpec(name="net1")))]
    p = step(c, alloc)
    assert p.ops[0] == alloc.ops[0] and [op.table for op in p.ops] == ["networks", "tasks"]
    assert c.store.view().get("networks", "net1") is not None


def test_restart_delay_waits_new_then_allocates_and_schedules_in_one_pass() -> None:
    c = Cluster(mknode("n1"))
    pol = RestartPolicy(condition=RestartCondition.ANY, delay=5)
    c.tx(Create("services", mkservice("s", 1, restart_policy=pol)))
    alloc = Recording()
    step(c, alloc)
    c.agents_run()
    (t,) = c.live("s")
    c.end(t, TaskState.FAILED)
    step(c, alloc)
    (new,) = [x for x in c.live("s") if x.status.state < TaskState.ASSIGNED]
    assert new.status.state == TaskState.NEW and len(alloc.seen) == 1  # not allocated during the delay
    c.now += 5
    step(c, alloc)
    t = c.store.view().get("tasks", new.id)
    assert (t.status.state, t.node_id, t.networks) == (TaskState.ASSIGNED, "n1", ATT)
    assert [x.id for x in alloc.seen[1]] == [new.id]


def test_default_allocator_passes_everything() -> None:
    t = Task(id="t1", spec=mkservice("x").spec.task)
    assert NoAllocation().allocate(None, [t], 0.0) == Allocation(allocated=[t])


# -- one set of node filters for every mode ---------------------------------------------


def test_os_and_arch_compare_case_insensitively_in_both_modes() -> None:
    # Nodes as agents of different origins describe themselves.
    c = Cluster(node("a", os="Linux", arch="x86_64"), node("b", os="linux", arch="AMD64"),
                node("c", os="linux", arch="arm64"), node("d", os="windows", arch="amd64"))
    pl = Placement(constraints=("node.platform.os==LINUX",), platforms=("Linux/X86_64",))
    c.tx(Create("services", mkservice("g", mode=ServiceMode.GLOBAL, placement=pl)),
         Create("services", mkservice("r", 4, placement=pl)))
    c.settle()
    assert sorted(t.node_id for t in c.live("g")) == ["a", "b"]
    assert sorted(t.node_id for t in c.live("r")) == ["a", "a", "b", "b"]
    # The same through a node.platform.arch constraint, in its kernel spelling.
    pl = Placement(constraints=("node.platform.arch==x86_64",))
    c.tx(Create("services", mkservice("g2", mode=ServiceMode.GLOBAL, placement=pl)),
         Create("services", mkservice("r2", 2, placement=pl)))
    c.settle()
    assert sorted(t.node_id for t in c.live("g2")) == ["a", "b", "d"]
    assert {t.node_id for t in c.live("r2")} <= {"a", "b", "d"} and len(c.live("r2")) == 2


def test_global_and_replicated_services_agree_on_which_nodes_are_eligible() -> None:
    nodes = [
        node("ok1", zone="eu"), node("ok2", os="LINUX", arch="x86_64", zone="eu"),
        node("us", zone="us"), node("nolabel"), node("arm", arch="aarch64", zone="eu"),
        evolve(node("down", zone="eu"), status__state=NodeState.DOWN),
        evolve(node("drained", zone="eu"), spec__availability=NodeAvailability.DRAIN),
        evolve(node("paused", zone="eu"), spec__availability=NodeAvailability.PAUSE),
    ]
    c = Cluster(*nodes)
    pl = Placement(constraints=("node.labels.zone==eu",), platforms=("linux/amd64",), max_replicas=1)
    c.tx(Create("services", mkservice("g", mode=ServiceMode.GLOBAL, placement=pl)),
         Create("services", mkservice("r", len(nodes), placement=pl)))
    c.converge()
    on = {s: sorted(t.node_id for t in c.live(s) if t.node_id) for s in ("g", "r")}
    assert on["g"] == on["r"] == ["ok1", "ok2"]
    # The replicas that found no node say why each node was refused: the same
    # filters, in the same order, as decided the global service's nodes.
    reasons = {t.status.message for t in c.live("r") if not t.node_id}
    assert reasons == {
        "no suitable node: 8 nodes checked, 2 fail constraint node.labels.zone==eu, "
        "2 max replicas per node (1) reached, 1 node availability is drain, 1 node availability is pause, "
        "1 node not ready, 1 platform mismatch"
    }


def test_placement_is_parsed_once_per_service_and_spec() -> None:
    c = Cluster(mknode("a"), mknode("b"), mknode("c"))
    pl = Placement(constraints=("node.role==worker",), platforms=("linux/amd64",))
    c.tx(Create("services", mkservice("g", mode=ServiceMode.GLOBAL, placement=pl)),
         Create("services", mkservice("r", 3, placement=pl)))
    cache = PlacementCache()
    step(c, placements=cache)
    assert len(c.live("g")) == 3 and all(t.node_id for t in c.live("r"))
    assert cache.parses == 2  # one per service, not per node or task
    step(c, placements=cache)
    assert cache.parses == 2  # kept across passes
    svc = c.store.view().get("services", "g")
    c.tx(Update("services", evolve(svc, spec__task__placement=evolve(pl, constraints=("node.role!=manager",)))))
    step(c, placements=cache)
    assert cache.parses == 3  # a changed placement is parsed again
    c.tx(Update("services", evolve(c.store.view().get("services", "g"), spec__replicas=5)))
    step(c, placements=cache)
    assert cache.parses == 3  # an equal placement is not


def test_a_constraint_parse_error_is_reported_once_per_service() -> None:
    # The control API refuses such specs; one may still come from older data.
    c = Cluster(mknode("a"), mknode("b"), mknode("c"))
    bad = Placement(constraints=("node.role==worker", "zone=eu"))
    c.tx(Create("services", mkservice("g", mode=ServiceMode.GLOBAL, placement=bad)),
         Create("services", mkservice("r", 3, placement=bad)))
    cache = PlacementCache()
    p = step(c, placements=cache)
    err = "invalid placement: constraints[1] 'zone=eu': expected KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==eu"
    assert p.placement_errors == {"g": err, "r": err}
    assert cache.parses == 2
    assert c.live("g") == []  # no node is eligible
    assert [(t.status.state, t.status.message) for t in c.live("r")] == [(TaskState.PENDING, err)] * 3
    p = step(c, placements=cache)
    assert p.ops == [] and p.placement_errors == {"g": err, "r": err} and cache.parses == 2


def test_an_existing_new_task_moved_through_both_stages_gets_one_update() -> None:
    """An existing NEW task moved through both stages gets one Update, not two."""
    c = Cluster(mknode("n1"))
    svc = mkservice("web", 1)
    c.tx(Create("services", svc))
    t = Task(id="t-old", service_id="web", slot=1, spec=svc.spec.task, spec_version=1,
             status=TaskStatus(state=TaskState.NEW, timestamp=c.now, message="created"))
    c.tx(Create("tasks", t))
    p = step(c, Recording())
    assert [type(op).__name__ for op in p.ops] == ["Update"]
    t = c.store.view().get("tasks", "t-old")
    assert (t.status.state, t.node_id) == (TaskState.ASSIGNED, "n1")
