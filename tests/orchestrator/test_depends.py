"""`depends_on`: a service's tasks are created and allocated, but stay
PENDING with the reason until the services it depends on satisfy their
condition; then they are scheduled in the same pass. Order of start only.

Passes are driven on a real store by `Cluster` (test_reconcile.py), which
also plays the agents."""

from __future__ import annotations

from typing import Any

import pytest

from api.objects import (
    DependsCondition,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceDependency,
    ServiceMode,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    ContainerSpec,
    evolve,
)
from manager.orchestrator.depends import DependsGate, started, unmet
from manager.orchestrator.reconcile import plan
from manager.store import Create, Delete, Update
from tests.orchestrator.test_reconcile import Cluster, mknode, mkservice

HEALTHY = DependsCondition.SERVICE_HEALTHY
DONE = DependsCondition.SERVICE_COMPLETED_SUCCESSFULLY


def needs(svc: Service, **deps: DependsCondition) -> Service:
    return evolve(svc, spec__depends_on=tuple(ServiceDependency(service=k, condition=v) for k, v in deps.items()))


def states(c: Cluster, sid: str) -> list[tuple[TaskState, str]]:
    return sorted((t.status.state, t.status.message) for t in c.live(sid))


def start(c: Cluster, sid: str, state: TaskState = TaskState.RUNNING) -> None:
    """The agents report `sid`'s assigned tasks in `state` (STARTING: a health check has not passed yet)."""
    c.tx(*[Update("tasks", evolve(t, status=TaskStatus(state=state, timestamp=c.now)))
           for t in c.live(sid) if t.node_id and t.status.state < state])


def test_front_waits_pending_for_a_healthy_back_then_is_scheduled() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", mkservice("back", 1)), Create("services", needs(mkservice("front", 2), back=HEALTHY)))
    c.settle()
    why = 'waiting for service "back" (service_healthy: 0 of 1 task running and healthy)'
    assert states(c, "front") == [(TaskState.PENDING, why)] * 2
    assert all(t.node_id == "" for t in c.live("front"))
    assert [t.status.state for t in c.live("back")] == [TaskState.ASSIGNED]
    # Waiting is quiet: a pass with nothing new writes nothing.
    assert c.step() == 0
    # Back's container runs but its health check has not passed: still waiting.
    start(c, "back", TaskState.STARTING)
    assert c.step() == 0 and states(c, "front") == [(TaskState.PENDING, why)] * 2
    # Healthy (reported RUNNING): front is scheduled in the next pass, each task written once.
    start(c, "back")
    assert c.step() == 2
    assert [t.status.state for t in c.live("front")] == [TaskState.ASSIGNED] * 2
    assert sorted(t.node_id for t in c.live("front")) == ["n1", "n2"]


def test_once_started_a_service_does_not_wait_again() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("db", 1)), Create("services", needs(mkservice("web", 1), db=HEALTHY)))
    c.converge()
    assert [t.status.state for t in c.live("web")] == [TaskState.RUNNING]
    # The dependency goes down: web keeps running ...
    (db_task,) = c.live("db")
    c.end(db_task, TaskState.FAILED)
    c.tx(Update("services", evolve(c.store.view().get("services", "db"), spec__replicas=0)))
    c.settle()
    assert [t.status.state for t in c.live("web")] == [TaskState.RUNNING]
    # ... and its new tasks (scaled up) are scheduled at once: it has started.
    c.tx(Update("services", evolve(c.store.view().get("services", "web"), spec__replicas=3)))
    c.settle()
    assert sorted(t.status.state for t in c.live("web")) == [TaskState.ASSIGNED] * 2 + [TaskState.RUNNING]


def test_service_started_on_a_service_scaled_to_zero_holds_at_once() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("idle", 0)), Create("services", needs(mkservice("web", 1), idle=DependsCondition.SERVICE_STARTED)))
    c.settle()
    assert [t.status.state for t in c.live("web")] == [TaskState.ASSIGNED]


def test_a_job_must_complete_successfully_first() -> None:
    c = Cluster(mknode("n1"))
    job = mkservice("migrate", 1, mode=ServiceMode.REPLICATED_JOB,
                    restart_policy=RestartPolicy(condition=RestartCondition.ON_FAILURE, delay=0, max_attempts=1))
    c.tx(Create("services", job), Create("services", needs(mkservice("app", 1), migrate=DONE)))
    c.converge()  # the job runs; app waits
    assert [t.status.state for t in c.live("migrate")] == [TaskState.RUNNING]
    assert states(c, "app") == [(TaskState.PENDING,
                                 'waiting for service "migrate" (service_completed_successfully: 0 of 1 task completed)')]
    # It fails: the reason says so while the failure stands ...
    (t,) = c.live("migrate")
    c.tx(Update("tasks", evolve(t, status=TaskStatus(state=TaskState.FAILED, timestamp=c.now, exit_code=3,
                                                      err="task: non-zero exit (3)"))))
    gate = DependsGate({s.id: s for s in c.store.view().list("services")},
                       {"migrate": [c.store.view().get("tasks", t.id)]})
    assert gate.reason(c.store.view().get("services", "app")) == (
        'waiting for service "migrate" (service_completed_successfully: task migrate.1 failed: '
        "task: non-zero exit (3))")
    # ... it is retried (one attempt left), and completes: app is scheduled.
    c.converge()
    (retry,) = [t for t in c.live("migrate") if t.status.state == TaskState.RUNNING]
    c.end(retry, TaskState.COMPLETE, 0)
    c.settle()
    assert [t.status.state for t in c.live("app")] == [TaskState.ASSIGNED]


def test_a_job_that_failed_for_good_holds_its_dependents() -> None:
    c = Cluster(mknode("n1"))
    job = mkservice("migrate", 1, mode=ServiceMode.REPLICATED_JOB,
                    restart_policy=RestartPolicy(condition=RestartCondition.NONE))
    c.tx(Create("services", job), Create("services", needs(mkservice("app", 1), migrate=DONE)))
    c.converge()
    (t,) = c.live("migrate")
    c.end(t, TaskState.FAILED, 1)
    c.converge()
    assert c.live("migrate") == []  # finished for good
    ((state, why),) = states(c, "app")
    assert state == TaskState.PENDING and "task migrate.1 failed" in why


def test_a_missing_dependency_and_several_unmet_ones_are_named() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("db", 1)),
         Create("services", needs(mkservice("web", 1), cache=DependsCondition.SERVICE_STARTED,
                                  db=DependsCondition.SERVICE_STARTED)))
    c.settle()
    assert states(c, "web") == [(TaskState.PENDING,
                                 'waiting for service "cache", which does not exist (and 1 more dependency)')]
    c.tx(Create("services", mkservice("cache", 2)))
    c.settle()
    assert states(c, "web") == [(TaskState.PENDING,
                                 'waiting for service "cache" (service_started: 0 of 2 tasks running)'
                                 " (and 1 more dependency)")]
    start(c, "cache")
    c.settle()
    assert states(c, "web") == [(TaskState.PENDING, 'waiting for service "db" (service_started: 0 of 1 task running)')]
    start(c, "db")
    c.settle()
    assert [t.status.state for t in c.live("web")] == [TaskState.ASSIGNED]


def test_global_dependents_wait_too() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", mkservice("db", 1)),
         Create("services", needs(mkservice("agent", 0, mode=ServiceMode.GLOBAL), db=DependsCondition.SERVICE_STARTED)))
    c.settle()
    assert [(t.status.state, t.node_id) for t in sorted(c.live("agent"), key=lambda t: t.node_id)] == [
        (TaskState.PENDING, "n1"), (TaskState.PENDING, "n2")]
    start(c, "db")
    c.settle()
    assert [t.status.state for t in c.live("agent")] == [TaskState.ASSIGNED] * 2


def test_the_gate_is_computed_once_per_service_and_pass() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("db", 1)), Create("services", needs(mkservice("web", 50), db=HEALTHY)))
    calls = 0
    import manager.orchestrator.depends as depends

    real = depends.unmet

    def counting(*a: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*a)

    depends.unmet = counting  # type: ignore[assignment]
    try:
        plan(c.store.view(), c.now)
    finally:
        depends.unmet = real  # type: ignore[assignment]
    assert calls == 1


def _task(state: TaskState, desired: TaskState = TaskState.RUNNING, slot: int = 1) -> Task:
    return Task(id=f"t{slot}{state.label}", service_id="s", slot=slot, desired_state=desired,
                spec=TaskSpec(container=ContainerSpec(image="x")), status=TaskStatus(state=state))


@pytest.mark.parametrize(("cond", "tasks", "holds"), [
    (DependsCondition.SERVICE_STARTED, [_task(TaskState.RUNNING)], True),
    (DependsCondition.SERVICE_STARTED, [_task(TaskState.STARTING)], False),
    (DependsCondition.SERVICE_STARTED, [_task(TaskState.RUNNING, TaskState.SHUTDOWN)], False),  # being stopped
    (HEALTHY, [_task(TaskState.RUNNING)], True),
    (DONE, [_task(TaskState.COMPLETE, TaskState.COMPLETE)], True),
    (DONE, [_task(TaskState.COMPLETE, TaskState.COMPLETE), _task(TaskState.FAILED, TaskState.FAILED, 2)], False),
    # A failure already replaced by a restart does not count.
    (DONE, [_task(TaskState.FAILED, TaskState.SHUTDOWN), _task(TaskState.COMPLETE, TaskState.COMPLETE, 2)], True),
    (DONE, [_task(TaskState.RUNNING)], False),
])
def test_conditions(cond: DependsCondition, tasks: list[Task], holds: bool) -> None:
    svc = mkservice("s", 1, mode=ServiceMode.REPLICATED_JOB if cond == DONE else ServiceMode.REPLICATED)
    assert (unmet(ServiceDependency(service="s", condition=cond), svc, tasks) is None) == holds


def test_started_means_on_a_node_and_wanted_running() -> None:
    assert started([_task(TaskState.ASSIGNED)]) and started([_task(TaskState.RUNNING)])
    assert not started([_task(TaskState.PENDING)])
    assert not started([_task(TaskState.RUNNING, TaskState.SHUTDOWN)])
    assert not started([_task(TaskState.COMPLETE, TaskState.COMPLETE)])


def test_removing_the_dependency_leaves_dependents_waiting_with_the_reason() -> None:
    c = Cluster(mknode("n1"))
    c.tx(Create("services", mkservice("db", 1)), Create("services", needs(mkservice("web", 1), db=HEALTHY)))
    c.settle()
    c.tx(Delete("services", "db"))
    c.settle()
    assert states(c, "web") == [(TaskState.PENDING, 'waiting for service "db", which does not exist')]
