"""The orchestrators' pure decisions, driven pass by pass on a real store.

`Cluster` plays the leader's loop (apply a pass's writes) and, when asked,
the agents (move assigned tasks to RUNNING, make them fail or complete).
"""

from __future__ import annotations

from typing import Any

from api.objects import (
    ContainerSpec,
    HealthcheckSpec,
    Node,
    NodeAvailability,
    NodeDescription,
    NodeSpec,
    NodeState,
    NodeStatus,
    Placement,
    Resources,
    ResourceSpec,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    TaskState,
    TaskStatus,
    UpdateConfig,
    UpdateOrder,
    UpdateState,
    FailureAction,
    evolve,
)
from manager.orchestrator.reconcile import plan
from manager.store import Create, MemoryStore, Update
from tests.store import Feeder

GiB = 1 << 30


def mknode(id: str, *, mem: int = 4 * GiB, state: NodeState = NodeState.READY, **labels: str) -> Node:
    return Node(id=id, spec=NodeSpec(labels=labels),
                description=NodeDescription(hostname=id, os="linux", arch="amd64", nano_cpus=2 * 10**9,
                                            memory_bytes=mem),
                status=NodeStatus(state=state))


def mkservice(id: str, replicas: int = 3, *, mode: ServiceMode = ServiceMode.REPLICATED, **task_kw: Any) -> Service:
    spec_kw = {k: task_kw.pop(k) for k in list(task_kw) if k in ("update_config", "rollback_config", "max_concurrent",
                                                                    "total_completions")}
    return Service(id=id, spec=ServiceSpec(
        name=id, mode=mode, replicas=replicas,
        task=TaskSpec(container=ContainerSpec(image="busybox", args=("sleep", "1000")), **task_kw), **spec_kw),
        spec_version=1)


class Cluster:
    def __init__(self, *nodes: Node) -> None:
        self.store = MemoryStore()
        self.feed = Feeder(self.store)
        self.now = 10_000.0
        for n in nodes:
            self.feed.tx(Create("nodes", n))

    def tx(self, *ops: Any) -> None:
        r = self.feed.tx(*ops)
        assert r.ok, r.error

    def step(self) -> int:
        """One orchestrator pass; returns how many writes it made."""
        p = plan(self.store.view(), self.now)
        if p.ops:
            self.tx(*p.ops)
        self.last_wake = p.wake_at
        return len(p.ops)

    def settle(self, max_passes: int = 20) -> None:
        for _ in range(max_passes):
            if self.step() == 0:
                return
        raise AssertionError("the orchestrator did not settle")

    def tasks(self, service: str | None = None) -> list[Any]:
        ts = self.store.view().list("tasks")
        return [t for t in ts if service is None or t.service_id == service]

    def live(self, service: str) -> list[Any]:
        return [t for t in self.tasks(service) if t.desired_state <= TaskState.RUNNING]

    def agents_run(self) -> None:
        """Every assigned task wanted running starts; every one wanted stopped stops."""
        ops = []
        for t in self.tasks():
            if t.node_id and t.desired_state <= TaskState.RUNNING and TaskState.ASSIGNED <= t.status.state < TaskState.RUNNING:
                ops.append(Update("tasks", evolve(t, status=TaskStatus(state=TaskState.RUNNING, timestamp=self.now))))
            elif t.node_id and t.desired_state > TaskState.RUNNING and not t.status.state.terminal:
                ops.append(Update("tasks", evolve(t, status=TaskStatus(state=TaskState.SHUTDOWN, timestamp=self.now))))
        if ops:
            self.tx(*ops)

    def end(self, task: Any, state: TaskState, code: int = 1) -> None:
        task = self.store.view().get("tasks", task.id)
        self.tx(Update("tasks", evolve(task, status=TaskStatus(state=state, timestamp=self.now, exit_code=code))))

    def converge(self) -> None:
        for _ in range(10):
            self.settle()
            self.agents_run()
        self.settle()


def test_replicated_create_scale_and_spread() -> None:
    c = Cluster(mknode("n1"), mknode("n2"), mknode("n3"))
    c.tx(Create("services", mkservice("web", 6)))
    c.converge()
    live = c.live("web")
    assert sorted(t.slot for t in live) == [1, 2, 3, 4, 5, 6]
    assert all(t.status.state == TaskState.RUNNING for t in live)
    per_node = sorted([sum(1 for t in live if t.node_id == n) for n in ("n1", "n2", "n3")])
    assert per_node == [2, 2, 2]
    svc = c.store.view().get("services", "web")
    c.tx(Update("services", evolve(svc, spec__replicas=2)))
    c.converge()
    assert sorted(t.slot for t in c.live("web")) == [1, 2]
    # Tasks of removed slots leave no history once stopped.
    assert {t.slot for t in c.tasks("web")} == {1, 2}
    c.tx(Update("services", evolve(c.store.view().get("services", "web"), spec__replicas=0)))
    c.converge()
    assert c.live("web") == []


def test_restart_policy_delay_and_max_attempts() -> None:
    c = Cluster(mknode("n1"))
    pol = RestartPolicy(condition=RestartCondition.ON_FAILURE, delay=5, max_attempts=2)
    c.tx(Create("services", mkservice("s", 1, restart_policy=pol)))
    c.converge()
    for attempt in range(3):
        (t,) = [x for x in c.live("s") if x.status.state == TaskState.RUNNING]
        c.end(t, TaskState.FAILED)
        c.settle()
        if attempt < 2:
            new = [x for x in c.live("s") if x.status.state < TaskState.ASSIGNED]
            assert len(new) == 1 and new[0].not_before == c.now + 5, new
            assert c.last_wake == c.now + 5  # the loop is told when to look again
            c.now += 5
            c.converge()
    # Third failure: attempts exhausted; the slot is finished, nothing restarts.
    assert c.live("s") == []
    assert [t.desired_state for t in c.tasks("s")].count(TaskState.FAILED) == 1
    # A task that completes is not restarted under on-failure.
    c.tx(Create("services", mkservice("ok", 1, restart_policy=pol)))
    c.converge()
    (t,) = c.live("ok")
    c.end(t, TaskState.COMPLETE, 0)
    c.converge()
    assert c.live("ok") == []


def test_node_down_and_drain_move_tasks() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", mkservice("web", 4)))
    c.converge()
    n1 = c.store.view().get("nodes", "n1")
    c.tx(Update("nodes", evolve(n1, status__state=NodeState.DOWN)))
    c.converge()
    live = [t for t in c.live("web")]
    assert len(live) == 4 and {t.node_id for t in live} == {"n2"}
    n1 = c.store.view().get("nodes", "n1")
    c.tx(Update("nodes", evolve(n1, status__state=NodeState.READY)))
    n2 = c.store.view().get("nodes", "n2")
    c.tx(Update("nodes", evolve(n2, spec__availability=NodeAvailability.DRAIN)))
    c.converge()
    assert {t.node_id for t in c.live("web")} == {"n1"}


def test_global_follows_nodes_and_constraints() -> None:
    c = Cluster(mknode("a", zone="eu"), mknode("b", zone="us"), mknode("c", zone="eu"))
    c.tx(Create("services", mkservice("g", mode=ServiceMode.GLOBAL,
                                      placement=Placement(constraints=("node.labels.zone==eu",)))))
    c.converge()
    assert sorted(t.node_id for t in c.live("g")) == ["a", "c"]
    assert all(t.status.state == TaskState.RUNNING for t in c.live("g"))  # assigned, so agents start them
    c.tx(Create("nodes", mknode("d", zone="eu")))
    c.converge()
    assert sorted(t.node_id for t in c.live("g")) == ["a", "c", "d"]
    a = c.store.view().get("nodes", "a")
    c.tx(Update("nodes", evolve(a, spec__availability=NodeAvailability.DRAIN)))
    c.converge()
    assert sorted(t.node_id for t in c.live("g")) == ["c", "d"]


def test_unplaceable_tasks_stay_pending_with_reason() -> None:
    c = Cluster(mknode("n1", mem=GiB, zone="eu"), mknode("n2", mem=GiB, zone="us"))
    res = Resources(reservations=ResourceSpec(memory_bytes=768 << 20))
    c.tx(Create("services", mkservice("big", 3, resources=res,
                                      placement=Placement(preferences=("node.labels.zone",)))))
    c.converge()
    states = sorted(t.status.state for t in c.live("big"))
    assert states == [TaskState.PENDING, TaskState.RUNNING, TaskState.RUNNING]
    (p,) = [t for t in c.live("big") if t.status.state == TaskState.PENDING]
    assert "no suitable node: 2 nodes checked" in p.status.message and "lack 768 MiB memory" in p.status.message
    assert {t.node_id for t in c.live("big") if t.node_id} == {"n1", "n2"}  # spread over zones


def test_replicated_job_runs_to_completion() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", mkservice("job", 2, mode=ServiceMode.REPLICATED_JOB, total_completions=5)))
    for _ in range(10):
        c.converge()
        running = [t for t in c.live("job") if t.status.state == TaskState.RUNNING]
        assert len(running) <= 2  # max_concurrent defaults to replicas
        for t in running:
            c.end(t, TaskState.COMPLETE, 0)
    c.converge()
    done = [t for t in c.tasks("job") if t.status.state == TaskState.COMPLETE]
    assert len(done) == 5 and c.live("job") == []


def test_rolling_update_batches_and_rollback_on_failure() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    uc = UpdateConfig(parallelism=2, monitor=5, failure_action=FailureAction.ROLLBACK, order=UpdateOrder.START_FIRST)
    c.tx(Create("services", mkservice("api", 4, update_config=uc)))
    c.converge()
    svc = c.store.view().get("services", "api")
    new_task = evolve(svc.spec.task, container=evolve(svc.spec.task.container, image="busybox:2",
                                                      healthcheck=HealthcheckSpec(test=("CMD", "false"))))
    c.tx(Update("services", evolve(svc, spec__task=new_task, previous_spec=svc.spec, spec_version=2,
                                   update_status=evolve(svc.update_status or _status(), state=UpdateState.UPDATING,
                                                        started_at=c.now))))
    c.settle()
    fresh = [t for t in c.live("api") if t.spec_version == 2]
    assert len(fresh) == 2  # one batch
    c.settle()
    assert len([t for t in c.live("api") if t.spec_version == 2]) == 2  # not replaced twice meanwhile
    c.agents_run()
    c.settle()
    # start-first: the old tasks of those slots stop only once the new ones run.
    assert len([t for t in c.live("api") if t.spec_version == 1]) == 2
    assert len([t for t in c.live("api") if t.spec_version == 2]) == 2
    # A new task fails (its healthcheck): more than 0% failed -> roll back.
    c.now += 1
    c.end(fresh[0], TaskState.FAILED)
    c.settle()
    svc = c.store.view().get("services", "api")
    assert svc.update_status.state == UpdateState.ROLLBACK_STARTED
    assert svc.spec.task.container.image == "busybox" and svc.spec_version == 3
    assert "failed" in svc.update_status.message
    for _ in range(10):
        c.now += 6  # past each batch's monitor window
        c.converge()
    svc = c.store.view().get("services", "api")
    assert svc.update_status.state == UpdateState.ROLLBACK_COMPLETED
    live = c.live("api")
    assert len(live) == 4 and all(t.spec.container.image == "busybox" for t in live)


def _status() -> Any:
    from api.objects import UpdateStatus

    return UpdateStatus()


def test_start_first_update_never_doubles_a_slot() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    uc = UpdateConfig(parallelism=2, monitor=1, order=UpdateOrder.START_FIRST)
    c.tx(Create("services", mkservice("api", 4, update_config=uc)))
    c.converge()
    svc = c.store.view().get("services", "api")
    c.tx(Update("services", evolve(svc, spec__task=evolve(svc.spec.task, force_update=1), previous_spec=svc.spec,
                                   spec_version=2)))
    for _ in range(12):
        c.step()
        c.agents_run()
        c.now += 0.5
        for slot in range(1, 5):
            new = [t for t in c.live("api") if t.slot == slot and t.spec_version == 2]
            assert len(new) <= 1, f"slot {slot} has {len(new)} new tasks"
    c.converge()
    live = c.live("api")
    assert sorted(t.slot for t in live) == [1, 2, 3, 4] and all(t.spec_version == 2 for t in live)


def test_rollback_replaces_a_slot_once_while_its_start_first_task_is_still_starting() -> None:
    # A health-checked replacement stays STARTING until its check passes; when
    # its sibling fails and the update rolls back, its slot holds two stale tasks
    # (the old one running, the new one starting): it gets ONE rollback task.
    c = Cluster(mknode("n1"), mknode("n2"))
    uc = UpdateConfig(parallelism=2, monitor=1, failure_action=FailureAction.ROLLBACK, order=UpdateOrder.START_FIRST)
    c.tx(Create("services", mkservice("api", 4, update_config=uc, rollback_config=UpdateConfig(
        parallelism=0, order=UpdateOrder.START_FIRST))))
    c.converge()
    svc = c.store.view().get("services", "api")
    c.tx(Update("services", evolve(svc, spec__task=evolve(svc.spec.task, force_update=1), previous_spec=svc.spec,
                                   spec_version=2, update_status=evolve(
                                       svc.update_status or _status(), state=UpdateState.UPDATING,
                                       started_at=c.now))))
    c.settle()
    fresh = [t for t in c.live("api") if t.spec_version == 2]
    assert len(fresh) == 2
    c.now += 1
    for t in fresh:  # both start; neither passed its health check yet
        c.end(t, TaskState.STARTING, 0)
    c.end(fresh[0], TaskState.FAILED)
    c.settle()
    svc = c.store.view().get("services", "api")
    assert svc.update_status.state == UpdateState.ROLLBACK_STARTED and svc.spec_version == 3
    for _ in range(8):
        c.step()
        for slot in range(1, 5):
            back = [t for t in c.live("api") if t.slot == slot and t.spec_version == 3]
            assert len(back) <= 1, f"slot {slot} got {len(back)} rollback tasks"
        c.agents_run()
        c.now += 2
    c.converge()
    live = c.live("api")
    assert sorted(t.slot for t in live) == [1, 2, 3, 4] and all(t.spec_version == 3 for t in live)
