"""The leadership supervisor: leader-only components start on election,
stop on step-down, and are restarted alone when they fail.

The first tests drive a `Supervisor` through the same call the Raft driver
makes (`leader_changed(old, new)`) with small components that record what
happened to them; the last ones run real Raft: a single node that elects
itself, and three in-process `ManagerProcess`es on loopback whose
orchestrator must keep working across a leadership transfer and the loss
of the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from api.objects import ContainerSpec, Service, ServiceSpec, TaskSpec, TaskState, evolve
from manager.leadership import Leader, RestartPolicy, Supervisor
from manager.process import ManagerOptions, ManagerProcess
from manager.raft.driver import RaftNode, RaftSettings
from manager.store import Create, MemoryStore, Update
from manager.tx import commit
from tests.harness.managers import free_port
from tests.harness.wait import until_async

ME, OTHER = 1, 2
FAST = RestartPolicy(backoff=0.02, max_backoff=0.08)


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    await until_async(cond, timeout, what, interval=0.005)


class Probe:
    """A leader-only component that records its lifetime: it ticks while it
    leads, fails its first `fail` runs (or returns from its first
    `give_up` runs), and takes `cleanup` seconds to clean up when cancelled."""

    def __init__(self, *, fail: int = 0, give_up: int = 0, cleanup: float = 0.0,
                 on_fail: Callable[[], None] | None = None) -> None:
        self.fail = fail
        self.give_up = give_up
        self.cleanup = cleanup
        self.on_fail = on_fail
        self.starts = 0
        self.ticks = 0
        self.cancelled = 0
        self.cleaned = 0
        self.running = False

    async def lead(self) -> None:
        self.starts += 1
        self.running = True
        try:
            await asyncio.sleep(0)
            if self.fail > 0:
                self.fail -= 1
                if self.on_fail is not None:
                    self.on_fail()
                raise RuntimeError(f"boom {self.fail}")
            if self.give_up > 0:
                self.give_up -= 1
                return
            while True:
                await asyncio.sleep(0.002)
                self.ticks += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            if self.cleanup:
                await asyncio.sleep(self.cleanup)
            self.cleaned += 1
            raise
        finally:
            self.running = False


async def started(sup: Supervisor, **probes: Leader) -> Supervisor:
    for name, p in probes.items():
        sup.add(name, p)
    sup.start()
    return sup


def lead_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(("lead-", "leadership-"))]


async def test_failing_component_is_logged_and_restarted_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="manager.leadership")
    steady, flaky = Probe(), Probe(fail=3)
    sup = await started(Supervisor(ME, policy=FAST), steady=steady, flaky=flaky)
    try:
        sup.leader_changed(0, ME)
        await eventually(lambda: steady.ticks > 0, "the steady component runs")
        ticks_before = steady.ticks
        await eventually(lambda: flaky.starts == 4 and flaky.running, "the flaky component runs after 3 failures")
        assert steady.starts == 1 and steady.running and steady.cancelled == 0
        assert steady.ticks > ticks_before, "the steady component stopped while the other was restarted"
        assert sup.failures == {"flaky": 3}
        errors = [r for r in caplog.records if "flaky failed; restarting it" in r.getMessage()]
        assert len(errors) == 3
        assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors), "no traceback logged"
        # The delay doubles, up to the cap.
        assert [r.getMessage().rsplit(" in ", 1)[1] for r in errors] == ["0.02 s", "0.04 s", "0.08 s"]
    finally:
        await sup.stop()
    assert not steady.running and not flaky.running and not lead_tasks()


async def test_component_that_returns_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="manager.leadership")
    quitter = Probe(give_up=1)
    sup = await started(Supervisor(ME, policy=FAST), quitter=quitter)
    try:
        sup.leader_changed(0, ME)
        await eventually(lambda: quitter.starts == 2 and quitter.ticks > 0, "it runs again")
        assert any("quitter returned while leading" in r.getMessage() for r in caplog.records)
        assert sup.failures == {"quitter": 1}
    finally:
        await sup.stop()


async def test_long_healthy_run_resets_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="manager.leadership")
    now = [0.0]

    def long_run() -> None:
        now[0] += 60.0  # each run "lasted" a minute before it failed

    flaky = Probe(fail=3, on_fail=long_run)
    sup = await started(Supervisor(ME, policy=RestartPolicy(backoff=0.01, max_backoff=1.0, healthy_after=30.0),
                                   clock=lambda: now[0]), flaky=flaky)
    try:
        sup.leader_changed(0, ME)
        await eventually(lambda: flaky.starts == 4 and flaky.running, "it runs after 3 failures")
        delays = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "restarting it" in r.getMessage()]
        assert delays == ["0.01 s"] * 3
    finally:
        await sup.stop()


async def test_step_down_cancels_every_component_and_waits_for_their_cleanup() -> None:
    slow, quick, flaky = Probe(cleanup=0.05), Probe(), Probe(fail=100)
    sup = await started(Supervisor(ME, policy=RestartPolicy(backoff=30.0, max_backoff=30.0)),
                        slow=slow, quick=quick, flaky=flaky)
    try:
        sup.leader_changed(0, ME)
        await eventually(lambda: slow.ticks > 0 and quick.ticks > 0 and sup.failures.get("flaky") == 1,
                         "all run (flaky waits in its backoff)")
        sup.leader_changed(ME, OTHER)
        await eventually(lambda: not sup.leading, "the term ends")
        # The term ended only once every lead() had finished its cleanup.
        assert (slow.cleaned, quick.cleaned) == (1, 1)
        assert not slow.running and not quick.running and not flaky.running
        snapshot = [(p.starts, p.ticks) for p in (slow, quick, flaky)]
        await asyncio.sleep(0.1)
        assert [(p.starts, p.ticks) for p in (slow, quick, flaky)] == snapshot, "something ran after step-down"
        assert not [t for t in lead_tasks() if t.get_name().startswith("lead-")]
    finally:
        await sup.stop()


async def test_each_election_starts_each_component_exactly_once() -> None:
    a, b = Probe(), Probe()
    sup = await started(Supervisor(ME, policy=FAST), a=a, b=b)
    try:
        sup.leader_changed(0, OTHER)  # someone else leads: nothing to do
        await asyncio.sleep(0.05)
        assert (a.starts, b.starts, sup.terms) == (0, 0, 0)

        sup.leader_changed(OTHER, ME)
        await eventually(lambda: a.ticks > 0 and b.ticks > 0, "both run")
        await asyncio.sleep(0.1)
        assert (a.starts, b.starts, sup.terms) == (1, 1, 1)
        assert sup.starts == {"a": 1, "b": 1}

        sup.leader_changed(ME, 0)
        await eventually(lambda: not sup.leading, "the term ends")
        sup.leader_changed(0, ME)
        await eventually(lambda: a.running and b.running, "both run again")
        await asyncio.sleep(0.05)
        assert (a.starts, b.starts, sup.terms) == (2, 2, 2)

        # Lost and won again before the supervisor woke up: another leader
        # may have written in between, so the old term ends and a new one
        # starts; the components must not carry on as if nothing happened.
        sup.leader_changed(ME, 0)
        sup.leader_changed(0, ME)
        await eventually(lambda: a.starts == 3 and b.starts == 3 and a.running and b.running, "a new term")
        assert (a.cancelled, b.cancelled, sup.terms) == (2, 2, 3)
    finally:
        await sup.stop()
    assert (a.cancelled, b.cancelled) == (3, 3)


async def test_stop_during_a_restart_backoff_ends_cleanly() -> None:
    steady, flaky = Probe(), Probe(fail=1)
    sup = await started(Supervisor(ME, policy=RestartPolicy(backoff=60.0, max_backoff=60.0)),
                        steady=steady, flaky=flaky)
    sup.leader_changed(0, ME)
    await eventually(lambda: sup.failures.get("flaky") == 1 and steady.ticks > 0, "flaky waits in its backoff")
    t0 = time.monotonic()
    await asyncio.wait_for(sup.stop(), 2.0)
    assert time.monotonic() - t0 < 1.0
    assert not sup.leading and not steady.running and flaky.starts == 1
    assert not lead_tasks(), "the supervisor left tasks behind"


async def test_stop_while_following_and_a_component_that_swallows_cancellation() -> None:
    class Stubborn:
        def __init__(self) -> None:
            self.ended = False

        async def lead(self) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass  # a bug: it does not re-raise
            self.ended = True

    idle = await started(Supervisor(ME))
    await asyncio.wait_for(idle.stop(), 1.0)  # never led

    s = Stubborn()
    sup = await started(Supervisor(ME, policy=FAST), stubborn=s)
    sup.leader_changed(0, ME)
    await eventually(lambda: sup.leading and sup.starts.get("stubborn") == 1, "it runs")
    sup.leader_changed(ME, OTHER)
    await eventually(lambda: not sup.leading, "the term ends anyway")
    assert s.ended and sup.starts == {"stubborn": 1}
    await asyncio.wait_for(sup.stop(), 1.0)
    assert not lead_tasks()


async def test_a_component_deaf_to_one_cancellation_is_named_and_cancelled_again(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="manager.leadership")

    class Deaf:
        """Ignores the first cancellation, as code under a 3.11
        asyncio.wait_for can when the awaited thing completes at once."""

        def __init__(self) -> None:
            self.heard = 0

        async def lead(self) -> None:
            while True:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    self.heard += 1
                    if self.heard > 1:
                        raise

    deaf, fine = Deaf(), Probe()
    sup = await started(Supervisor(ME, policy=FAST, stop_warning=0.05), deaf=deaf, fine=fine)
    try:
        sup.leader_changed(0, ME)
        await eventually(lambda: fine.ticks > 0 and sup.starts.get("deaf") == 1, "both run")
        sup.leader_changed(ME, OTHER)
        await eventually(lambda: not sup.leading, "the term ends after a second cancellation")
        assert deaf.heard == 2 and not fine.running
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and warned[0].startswith("leadership: deaf still running"), warned
    finally:
        await sup.stop()


def test_policy_and_registration_are_checked() -> None:
    with pytest.raises(ValueError, match="backoff"):
        RestartPolicy(backoff=0.0)
    with pytest.raises(ValueError, match="max_backoff"):
        RestartPolicy(backoff=2.0, max_backoff=1.0)
    sup = Supervisor(ME)
    sup.add("x", Probe())
    with pytest.raises(ValueError, match="already registered"):
        sup.add("x", Probe())


# -- with real Raft ---------------------------------------------------------------


async def test_single_node_raft_drives_the_supervisor_and_survives_a_bad_listener(tmp_path: Path) -> None:
    store = MemoryStore()
    raft = RaftNode(1, str(tmp_path / "raft"), store, initial_members={1: f"127.0.0.1:{free_port()}"},
                    settings=RaftSettings(tick_interval=0.02))
    probe = Probe()
    sup = Supervisor(raft.id, [("probe", probe)])

    def broken(old: int, new: int) -> None:
        raise RuntimeError("a listener with a bug")

    raft.add_leader_listener(broken)
    raft.add_leader_listener(sup.leader_changed)
    sup.start()
    await raft.start()
    try:
        await asyncio.wait_for(sup.wait_elected(), 10)
        await eventually(lambda: probe.running, "the component runs on the elected node")
        assert raft.is_leader and raft.fatal is None
        await commit(raft, store, [Create("services", _service("after-election"))])
    finally:
        await sup.stop()
        await raft.stop()
    assert probe.starts == 1 and not probe.running


def _service(name: str, replicas: int = 2) -> Service:
    return Service(id=name, spec_version=1, spec=ServiceSpec(
        name=name, replicas=replicas, task=TaskSpec(container=ContainerSpec(image="busybox", args=("true",)))))


def _live_tasks(m: ManagerProcess, service: str) -> int:
    return sum(1 for t in m.store.view().find("tasks", "service_id", service)
               if t.desired_state <= TaskState.RUNNING)


async def test_three_managers_orchestrate_across_transfer_and_leader_loss(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    members = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    ms = [ManagerProcess(ManagerOptions(node_id=i, data_dir=str(tmp_path / f"m{i}"), listen_addr=addr,
                                        initial_cluster=members, settings=RaftSettings(tick_interval=0.05)))
          for i, addr in members.items()]
    running = list(ms)
    try:
        for m in ms:
            await m.start()

        async def the_leader(exclude: ManagerProcess | None = None) -> ManagerProcess:
            def one() -> bool:
                leading = [m for m in running if m.leadership.leading]
                return len(leading) == 1 and leading[0] is not exclude and leading[0].raft.is_leader
            await eventually(one, "exactly one manager runs the leader-only components", timeout=20)
            return next(m for m in running if m.leadership.leading)

        first = await the_leader()
        expected = {"dispatcher": 1, "roles": 1, "orchestrator": 1, "stacks": 1}
        await eventually(lambda: first.leadership.starts == expected, "each component starts once")
        assert all(m.leadership.starts == {} for m in running if m is not first)

        await commit(first.raft, first.store, [Create("services", _service("web", 2))])
        await eventually(lambda: _live_tasks(first, "web") == 2, "the first leader's orchestrator creates 2 tasks")

        # Step-down by transfer: the old leader stops everything, the new one starts each once.
        target = next(m for m in running if m is not first)
        await first.raft.transfer_leadership(target.raft.id)
        second = await the_leader(exclude=first)
        assert second is target
        await eventually(lambda: second.leadership.starts == expected, "each component starts once")
        assert first.leadership.starts == expected and not first.leadership.leading
        orchestrated = first.orchestrator.passes
        svc = second.store.view().get("services", "web")
        assert svc is not None
        await commit(second.raft, second.store, [Update("services", evolve(svc, spec__replicas=4))])
        await eventually(lambda: _live_tasks(second, "web") == 4, "the new leader's orchestrator scales to 4")
        assert first.orchestrator.passes == orchestrated, "the old leader's orchestrator still ran"

        # Losing the leader: the two others elect one, whose orchestrator takes over.
        await second.stop()
        running.remove(second)
        third = await the_leader()
        await eventually(lambda: third.leadership.starts.get("orchestrator", 0) >= 1, "its orchestrator starts")
        await commit(third.raft, third.store, [Create("services", _service("api", 3))])
        await eventually(lambda: _live_tasks(third, "api") == 3, "the third leader's orchestrator creates 3 tasks")
        assert _live_tasks(third, "web") == 4
    finally:
        for m in running:
            await m.stop()
