"""Partial passes: `plan(..., services_changed=...)` reconciles only the
services named (and those with tasks waiting to be placed), reading their
tasks from the store's indexes, and decides for them what a full pass does.

The scenario below is driven by full passes; before each one, a partial pass
over the services whose tasks or spec changed since the previous pass (as
the leader's loop tracks them from its watch) must make the same writes.
"""

from __future__ import annotations

from typing import Any

import pytest

from api.objects import (
    DependsCondition,
    NodeAvailability,
    NodeState,
    Resources,
    ResourceSpec,
    ServiceDependency,
    TaskState,
    UpdateConfig,
    UpdateOrder,
    evolve,
)
from manager.orchestrator.reconcile import plan, quiet_task_change, same_to_orchestrator, waiting_services
from manager.store import Create, Delete, Update
from manager.store.watch import EventAction

from .test_reconcile import Cluster, GiB, mknode, mkservice


def _key(op: Any) -> tuple[Any, ...]:
    """An op without the random ids of the tasks a pass creates."""
    if isinstance(op, Delete):
        return ("delete", op.table, op.id)
    o = op.obj
    if op.table != "tasks":
        return (type(op).__name__, op.table, o.id, o.model_dump_json())
    return (type(op).__name__, o.id if isinstance(op, Update) else "", o.service_id, o.slot, o.node_id,
            o.desired_state, o.status.state, o.status.message, o.spec_version, o.not_before)


class Shadowed(Cluster):
    """A cluster whose every pass is also made partial, and compared."""

    def __init__(self, *nodes: Any) -> None:
        super().__init__(*nodes)
        self.watch = self.store.watch()
        self.partial_passes = 0
        self.quiet = 0  # task changes left out as quiet
        self.last_wake: float | None = None

    def _changed(self) -> set[str] | None:
        changed: set[str] | None = set()
        view = self.store.view()
        for ev in self.watch.poll():
            if changed is None:
                continue
            if ev.table == "tasks":
                if ev.action is EventAction.UPDATE and quiet_task_change(ev.old, ev.obj, view):
                    self.quiet += 1
                    continue
                changed.add(ev.obj.service_id)
            elif ev.table == "services":
                changed.add(ev.obj.id)
            else:
                changed = None
        return changed

    def step(self) -> int:
        changed = self._changed()
        if self.last_wake is not None and self.last_wake <= self.now:
            changed = None  # a time asked for came due: the loop makes this pass full
        view = self.store.view()
        full = plan(view, self.now)
        if changed is not None:
            part = plan(view, self.now, services_changed=changed)
            assert sorted(map(_key, part.ops)) == sorted(map(_key, full.ops))
            self.partial_passes += 1
        if full.ops:
            self.tx(*full.ops)
        self.last_wake = full.wake_at
        return len(full.ops)


def test_partial_passes_decide_as_full_ones_through_a_service_life() -> None:
    c = Shadowed(mknode("n1"), mknode("n2"), mknode("n3"))
    c.tx(Create("services", mkservice("web", 6)), Create("services", mkservice("db", 2)))
    c.converge()
    # Scale up and down.
    c.tx(Update("services", evolve(c.store.view().get("services", "web"), spec__replicas=9)))
    c.converge()
    c.tx(Update("services", evolve(c.store.view().get("services", "web"), spec__replicas=3)))
    c.converge()
    # A task fails: restarted in its slot.
    c.end(c.live("db")[0], TaskState.FAILED)
    c.converge()
    # A start-first rolling update.
    web = c.store.view().get("services", "web")
    c.tx(Update("services", evolve(web, spec=evolve(web.spec, update_config=UpdateConfig(
        parallelism=1, order=UpdateOrder.START_FIRST), task=evolve(web.spec.task, force_update=1)),
        spec_version=web.spec_version + 1)))
    for _ in range(12):
        c.converge()
        c.now += 10
    assert all(t.spec_version == web.spec_version + 1 for t in c.live("web"))
    # A node drained (a full pass), then the service removed.
    n1 = c.store.view().get("nodes", "n1")
    c.tx(Update("nodes", evolve(n1, spec__availability=NodeAvailability.DRAIN)))
    c.converge()
    c.tx(Delete("services", "web"))
    c.converge()
    assert c.tasks("web") == []
    assert c.partial_passes > 20
    assert c.quiet > 5  # the first starts were left out, and the passes still agreed


def test_a_dependent_waiting_in_a_partial_pass_sees_its_dependency_start() -> None:
    c = Shadowed(mknode("n1"), mknode("n2"))
    back = mkservice("back", 1)
    front = mkservice("front", 2)
    front = evolve(front, spec__depends_on=(ServiceDependency(service="back",
                                                                condition=DependsCondition.SERVICE_STARTED),))
    c.tx(Create("services", front), Create("services", back))
    c.converge()
    assert all(t.status.state == TaskState.RUNNING for t in c.live("front"))


def test_pending_tasks_are_placed_when_another_service_frees_room() -> None:
    """A partial pass after service a scales down, naming only a, still
    schedules b's waiting tasks into the room a's tasks left."""
    c = Shadowed(mknode("n1", mem=GiB))
    res = Resources(reservations=ResourceSpec(memory_bytes=600 << 20))
    c.tx(Create("services", mkservice("a", 1, resources=res)))
    c.converge()
    c.tx(Create("services", mkservice("b", 1, resources=res)))
    c.converge()
    assert [t.status.state for t in c.live("b")] == [TaskState.PENDING]
    assert waiting_services(c.store.view()) == {"b"}
    c.tx(Update("services", evolve(c.store.view().get("services", "a"), spec__replicas=0)))
    c.converge()
    assert [t.status.state for t in c.live("b")] == [TaskState.RUNNING]


class _NoWalk:
    """A read view on which walking the tasks table fails the test."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.read: set[str] = set()

    def list(self, table: str) -> list[Any]:
        if table == "tasks":
            pytest.fail("a partial pass walked every task")
        return list(self.view.list(table))

    def find(self, table: str, index: str, value: Any) -> list[Any]:
        if table == "tasks" and index == "service_id":
            self.read.add(value)
        return list(self.view.find(table, index, value))

    def get(self, table: str, id: str) -> Any:
        return self.view.get(table, id)


def test_a_partial_pass_reads_only_the_services_it_covers() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(*(Create("services", mkservice(f"s{i}", 5)) for i in range(4)))
    c.converge()
    svc = c.store.view().get("services", "s2")
    c.tx(Update("services", evolve(svc, spec__replicas=3)))
    view = _NoWalk(c.store.view())
    p = plan(view, c.now, services_changed={"s2"})
    assert view.read == {"s2"}
    assert sorted(op.obj.slot for op in p.ops) == [4, 5]
    assert all(op.obj.service_id == "s2" and op.obj.desired_state == TaskState.SHUTDOWN for op in p.ops)


def test_a_node_going_down_is_left_to_a_full_pass() -> None:
    """Documented contract: node changes are not covered by partial passes
    (the loop makes the next pass full); a partial pass naming nothing
    changes nothing."""
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", mkservice("web", 4)))
    c.converge()
    n1 = c.store.view().get("nodes", "n1")
    c.tx(Update("nodes", evolve(n1, status__state=NodeState.DOWN)))
    assert plan(c.store.view(), c.now, services_changed=set()).ops == []
    assert plan(c.store.view(), c.now).ops != []


def test_a_node_written_again_unchanged_needs_no_full_pass() -> None:
    """The loop makes the pass after a node event full unless the node reads
    the same to a pass (an agent registering anew rewrites it)."""
    n = mknode("n1", zone="eu")
    again = evolve(n, status__addr="10.0.0.9", status__message="")
    assert same_to_orchestrator(n, again)
    assert not same_to_orchestrator(n, evolve(n, status__state=NodeState.DOWN))
    assert not same_to_orchestrator(n, evolve(n, spec__availability=NodeAvailability.DRAIN))
    assert not same_to_orchestrator(n, evolve(n, spec__labels={"zone": "us"}))
    assert not same_to_orchestrator(n, evolve(n, description__memory_bytes=GiB))
    assert not same_to_orchestrator(None, n)
