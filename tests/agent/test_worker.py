"""The agent's worker against an in-memory engine.

`FakeEngine` (tests/agent/fake_engine.py) implements
`agent.worker.TaskEngine`, what the worker needs of the engine, with plain
records, so these tests drive the worker's decisions frame by frame:
assignments in, status reports and engine calls out. The real engine (runc,
images) is covered by tests/runtime and tests/services.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from agent.engine import TaskFile
from agent.worker import TaskEngine, Worker
from api.objects import (
    ContainerSpec,
    Secret,
    SecretReference,
    SecretSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    evolve,
)
from api.session import (
    AssignmentChanges,
    AssignmentsFull,
    Frame,
    LogEnd,
    LogLines,
    LogRequest,
    SecretUpdate,
    StatusBatch,
    TaskRemove,
    TaskUpdate,
    decode,
    encode,
)
from tests.agent.fake_engine import FakeEngine
from tests.harness.wait import until_async


def _typed(e: FakeEngine) -> TaskEngine:
    return e  # the fake is a TaskEngine (checked by mypy)


class Manager:
    """The manager's side of the session: frames the worker sends, decoded
    from bytes as the dispatcher would."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    async def send(self, frame: Frame) -> bool:
        self.frames.append(decode(encode(frame)))
        return True

    def states(self, tid: str) -> list[TaskState]:
        return [u.state for f in self.frames if isinstance(f, StatusBatch) for u in f.updates if u.id == tid]

    def last(self, tid: str) -> Any:
        return next(u for f in reversed(self.frames) if isinstance(f, StatusBatch)
                    for u in f.updates if u.id == tid)


def mktask(id: str, *, desired: TaskState = TaskState.RUNNING, image: str = "busybox",
           state: TaskState = TaskState.ASSIGNED, **container: Any) -> TaskUpdate:
    return TaskUpdate(service_name="web", task=Task(
        id=id, service_id="svc", slot=1, node_id="n1", desired_state=desired, status=TaskStatus(state=state),
        spec=TaskSpec(container=ContainerSpec(image=image, **container))))


def full(*changes: Any) -> AssignmentsFull:
    return decode(encode(AssignmentsFull(changes=changes)))  # type: ignore[return-value]


def changes(*changes: Any) -> AssignmentChanges:
    return decode(encode(AssignmentChanges(changes=changes)))  # type: ignore[return-value]


async def until(cond: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    return await until_async(cond, timeout, what, interval=0.01)


@pytest.fixture
async def setup() -> Any:
    engine, mgr = FakeEngine(), Manager()
    w = Worker(_typed(engine), mgr.send)
    w.start()
    yield w, engine, mgr
    await w.stop()


async def test_assigned_tasks_start_and_report_in_order(setup: Any) -> None:
    w, engine, mgr = setup
    engine.gate = asyncio.Event()
    w.on_message(full(mktask("a", env=("X=1",), labels={"app": "web"})))
    # Pulling: ACCEPTED and PREPARING are decided at once, so one report carries PREPARING.
    await until(lambda: TaskState.PREPARING in mgr.states("a"), "PREPARING")
    engine.gate.set()
    await until(lambda: TaskState.RUNNING in mgr.states("a"), "RUNNING")
    states = mgr.states("a")
    assert states == sorted(states) and len(set(states)) == len(states)  # forward only, each once
    assert {TaskState.PREPARING, TaskState.RUNNING} <= set(states) and states[-1] == TaskState.RUNNING
    assert engine.calls == [("pull", "busybox"), ("run", "a")]
    rec = engine.of("a")
    assert rec.name == "web.1.a" and rec.spec["labels"]["app"] == "web"
    assert mgr.last("a").container_id == rec.id
    # The same set again changes nothing.
    w.on_message(changes(mktask("a")))
    await asyncio.sleep(0.1)
    assert engine.calls == [("pull", "busybox"), ("run", "a")]


async def test_removed_tasks_are_stopped_then_removed(setup: Any) -> None:
    w, engine, mgr = setup
    w.on_message(full(mktask("a"), mktask("b")))
    await until(lambda: mgr.states("a")[-1:] == [TaskState.RUNNING] and mgr.states("b")[-1:] == [TaskState.RUNNING],
                "both RUNNING")
    # Wanted stopped: stopped, SHUTDOWN; the container stays until the task goes.
    w.on_message(changes(mktask("a", desired=TaskState.SHUTDOWN)))
    await until(lambda: mgr.states("a")[-1] == TaskState.SHUTDOWN, "a SHUTDOWN")
    assert ("stop", "a") in engine.calls and engine.of("a").status == "exited"
    w.on_message(changes(TaskRemove(id="a")))
    await until(lambda: ("remove", "a") in engine.calls, "a's container removed")
    # Removed from the set while running: the container goes too.
    w.on_message(changes(TaskRemove(id="b")))
    await until(lambda: ("remove", "b") in engine.calls, "b's container removed")
    assert engine.records == {}
    assert w.assigned.tasks == {}


async def test_exits_are_reported_with_their_code(setup: Any) -> None:
    w, engine, mgr = setup
    w.on_message(full(mktask("ok"), mktask("bad"), mktask("oom")))
    await until(lambda: all(mgr.states(t)[-1:] == [TaskState.RUNNING] for t in ("ok", "bad", "oom")), "RUNNING")
    engine.exit("ok", 0)
    engine.exit("bad", 3)
    engine.exit("oom", 137, oom=True)
    await until(lambda: all(mgr.states(t)[-1] > TaskState.RUNNING for t in ("ok", "bad", "oom")), "ends")
    ok, bad, oom = mgr.last("ok"), mgr.last("bad"), mgr.last("oom")
    assert (ok.state, ok.exit_code) == (TaskState.COMPLETE, 0)
    assert (bad.state, bad.exit_code, bad.err) == (TaskState.FAILED, 3, "task: non-zero exit (3)")
    assert (oom.state, oom.err) == (TaskState.FAILED, "OOM killed")
    # Ended tasks are not started again (the manager replaces them).
    await asyncio.sleep(0.1)
    assert [c for c in engine.calls if c[0] == "run"] == [("run", "ok"), ("run", "bad"), ("run", "oom")]


async def test_a_pull_error_rejects_the_task(setup: Any) -> None:
    w, engine, mgr = setup
    engine.missing_images["nope:1"] = "manifest unknown: nope:1"
    w.on_message(full(mktask("a", image="nope:1")))
    await until(lambda: mgr.states("a")[-1:] == [TaskState.REJECTED], "REJECTED")
    assert "manifest unknown" in mgr.last("a").err
    assert not any(c[0] == "run" for c in engine.calls)


async def test_existing_containers_are_adopted_after_a_restart() -> None:
    engine, mgr = FakeEngine(), Manager()
    running = engine.add("alive")
    engine.add("died", status="exited", exit_code=1)
    engine.add("orphan")  # its task is no longer assigned here
    w = Worker(engine, mgr.send)
    w.start()
    try:
        w.on_message(full(mktask("alive", state=TaskState.RUNNING), mktask("died", state=TaskState.RUNNING)))
        await until(lambda: ("remove", "orphan") in engine.calls and mgr.states("died"), "adoption")
        assert mgr.states("alive") == [TaskState.RUNNING] and mgr.last("alive").container_id == running.id
        assert (mgr.last("died").state, mgr.last("died").exit_code) == (TaskState.FAILED, 1)
        assert not any(c[0] in ("run", "pull") for c in engine.calls)  # nothing started again
    finally:
        await w.stop()


async def test_a_new_session_gets_the_reports_it_lacks(setup: Any) -> None:
    w, engine, mgr = setup
    w.on_message(full(mktask("a")))
    await until(lambda: mgr.states("a")[-1:] == [TaskState.RUNNING], "RUNNING")
    mgr.frames.clear()
    # A new manager (or session) that knows the task only as ASSIGNED.
    w.on_message(full(mktask("a", state=TaskState.ASSIGNED)))
    await until(lambda: mgr.states("a") == [TaskState.RUNNING], "RUNNING sent again")
    mgr.frames.clear()
    w.on_message(full(mktask("a", state=TaskState.RUNNING)))  # up to date: nothing to send
    await asyncio.sleep(0.1)
    assert mgr.states("a") == []


async def test_secrets_are_mounted_from_the_set(setup: Any) -> None:
    w, engine, mgr = setup
    secret = Secret(id="s1", spec=SecretSpec(name="pw", data=b"hunter2"))
    t = mktask("a", secrets=(SecretReference(secret_id="s1", secret_name="pw", mode=0o400),))
    w.on_message(full(SecretUpdate(secret=secret), t))
    await until(lambda: "a" in engine.files, "a started")
    assert engine.files["a"] == [TaskFile(kind="secret", target="/run/secrets/pw", data=b"hunter2", uid="0", gid="0",
                                          mode=0o400)]
    assert w.assigned.secrets == {"s1": secret}
    w.on_message(changes(TaskRemove(id="a")))
    await until(lambda: ("remove", "a") in engine.calls, "removed")


async def test_logs_are_streamed_in_frames(setup: Any) -> None:
    w, engine, mgr = setup
    engine.logs_of["a"] = [(f"2024-01-01T00:00:0{i}Z", "stdout", f"line {i}") for i in range(5)]
    w.on_message(full(mktask("a")))
    await until(lambda: mgr.states("a")[-1:] == [TaskState.RUNNING], "RUNNING")
    w.on_message(LogRequest(id="r1", tasks=("a", "ghost"), tail=2))
    await until(lambda: sum(isinstance(f, LogEnd) for f in mgr.frames) == 2, "both streams end")
    lines = [ln for f in mgr.frames if isinstance(f, LogLines) and f.task == "a" for ln in f.lines]
    assert [ln[2] for ln in lines] == ["line 3", "line 4"]
    ends = {f.task: f.error for f in mgr.frames if isinstance(f, LogEnd)}
    assert ends == {"a": "", "ghost": "no container on this node"}


async def test_a_task_update_applies_incrementally(setup: Any) -> None:
    w, engine, mgr = setup
    w.on_message(full(mktask("a")))
    await until(lambda: mgr.states("a")[-1:] == [TaskState.RUNNING], "RUNNING")
    w.on_message(changes(mktask("b")))
    await until(lambda: mgr.states("b")[-1:] == [TaskState.RUNNING], "b RUNNING")
    assert set(w.assigned.tasks) == {"a", "b"}  # a change adds, it does not replace
    w.on_message(full(mktask("b", state=TaskState.RUNNING)))  # a full set replaces
    await until(lambda: ("remove", "a") in engine.calls, "a removed")
    assert evolve(w.assigned.tasks["b"].task, status=TaskStatus()) == evolve(mktask("b").task, status=TaskStatus())


async def test_leaving_the_cluster_removes_every_task_container(setup: Any) -> None:
    w, engine, mgr = setup
    w.on_message(full(mktask("a"), mktask("b")))
    await until(lambda: len(engine.records) == 2 and all(r.status == "running" for r in engine.records.values()),
                "both running")
    await w.leave(timeout=5)
    assert engine.records == {} and {("remove", "a"), ("remove", "b")} <= set(engine.calls)
    assert w.assigned.tasks == {}


async def test_a_task_on_a_network_is_rejected_without_networking(setup: Any) -> None:
    from api.objects import NetworkAttachment, evolve

    w, engine, mgr = setup
    u = mktask("n")
    u = evolve(u, task=evolve(u.task, networks=(NetworkAttachment(network_id="net", addresses=("10.0.0.2/24",)),)))
    w.on_message(full(u))
    await until(lambda: TaskState.REJECTED in mgr.states("n"), "REJECTED")
    assert "runs no overlay networking" in mgr.last("n").err and engine.records == {}


async def test_nothing_is_removed_before_the_first_full_set() -> None:
    engine, mgr = FakeEngine(), Manager()
    engine.add("t1")
    dead = engine.add("t2", status="exited", exit_code=0)
    w = Worker(engine, mgr.send)
    w.start()
    try:
        w.container_changed(dead)  # a container event while the managers are unreachable
        await w.reconcile()
        await asyncio.sleep(0.1)
        assert not any(c[0] == "remove" for c in engine.calls) and len(engine.records) == 2
        w.on_message(full(mktask("t1", state=TaskState.RUNNING)))
        await until(lambda: ("remove", "t2") in engine.calls, "t2 removed once the set is known")
        assert ("remove", "t1") not in engine.calls
    finally:
        await w.stop()



async def test_a_task_with_a_health_check_is_running_only_once_healthy(setup: Any) -> None:
    w, engine, mgr = setup
    real_run = engine.run

    async def run_with_check(req: Any, *, files: Any = None) -> Any:
        rec = await real_run(req, files=files)
        rec.health_state = {"status": "starting", "failing_streak": 0, "log": []}
        return rec

    engine.run = run_with_check
    w.on_message(full(mktask("h")))
    await until(lambda: mgr.states("h") and mgr.states("h")[-1] == TaskState.STARTING, "STARTING")
    await asyncio.sleep(0.2)
    assert TaskState.RUNNING not in mgr.states("h")  # not a backend of its service yet
    assert mgr.last("h").message == "waiting for the health check"
    rec = engine.of("h")
    rec.health_state = {"status": "healthy", "failing_streak": 0, "log": []}
    assert engine.callback is not None
    engine.callback(rec)
    await until(lambda: mgr.states("h")[-1] == TaskState.RUNNING, "RUNNING once healthy")
