"""The allocator across a change of leader, with three real managers (Raft
over loopback, in one process): the new leader's allocator, rebuilt from its
store, agrees with what the old one handed out and keeps handing out
addresses nobody holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.objects import ContainerSpec, Network, NetworkSpec, Service, ServiceSpec, TaskSpec, TaskState, evolve
from manager.allocator import Allocator
from manager.process import ManagerOptions, ManagerProcess
from manager.raft.driver import RaftSettings
from manager.store import Create, Update
from manager.tx import commit
from tests.harness.managers import free_port
from tests.harness.wait import until_async


async def eventually(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    await until_async(cond, timeout, what)


def held(m: ManagerProcess) -> list[str]:
    """Every address the store says is held: tasks' and the VIPs."""
    view = m.store.view()
    out = [a for t in view.list("tasks") for att in t.networks for a in att.addresses]
    out += [v.addr for s in view.list("services") for v in s.endpoint.virtual_ips]
    return out


def allocated(m: ManagerProcess, n: int) -> bool:
    ts = [t for t in m.store.view().list("tasks") if t.desired_state <= TaskState.RUNNING]
    return len(ts) == n and all(t.networks and t.status.state == TaskState.PENDING for t in ts)


def from_store(m: ManagerProcess) -> dict[str, int]:
    view = m.store.view()
    return Allocator.restore(None, view.list("networks"), view.list("services"), view.list("tasks")).counts()


async def test_a_new_leader_allocates_from_what_the_old_one_left(tmp_path: Path) -> None:
    members = {i + 1: f"127.0.0.1:{free_port()}" for i in range(3)}
    ms = [ManagerProcess(ManagerOptions(node_id=i, data_dir=str(tmp_path / f"m{i}"), listen_addr=addr,
                                        initial_cluster=members, settings=RaftSettings(tick_interval=0.05)))
          for i, addr in members.items()]
    running = list(ms)
    try:
        for m in ms:
            await m.start()

        def leader() -> ManagerProcess | None:
            lead = [m for m in running if m.leadership is not None and m.leadership.leading]
            return lead[0] if len(lead) == 1 and lead[0].raft.is_leader else None

        await eventually(lambda: leader() is not None, "a leader")
        first = leader()
        assert first is not None
        # No nodes: tasks stop at PENDING (allocated, nowhere to run), which is
        # all this test needs.
        await commit(first.raft, first.store, [
            Create("networks", Network(id="net", spec=NetworkSpec(name="app", ipam=[{"subnet": "10.9.0.0/24"}]))),
            Create("services", Service(id="web", spec_version=1, spec=ServiceSpec(
                name="web", replicas=4,
                task=TaskSpec(container=ContainerSpec(image="busybox"), networks=("net",)))))])
        await eventually(lambda: allocated(first, 4), "4 tasks allocated by the first leader")
        before = first.orchestrator.allocator.counts()
        assert before == from_store(first) and before["addrs:net"] == 5  # 4 tasks + the VIP

        await first.stop()  # the leader goes away
        running.remove(first)
        await eventually(lambda: leader() is not None, "a new leader")
        second = leader()
        assert second is not None
        svc = second.store.view().get("services", "web")
        await commit(second.raft, second.store, [Update("services", evolve(svc, spec__replicas=8))])
        await eventually(lambda: allocated(second, 8), "8 tasks allocated by the new leader")
        await eventually(lambda: second.orchestrator.allocator.counts() is not None, "the new allocator")
        addrs = held(second)
        assert len(addrs) == 9 and len(set(addrs)) == 9, "an address handed out twice"
        assert second.orchestrator.allocator.counts() == from_store(second)
        assert second.orchestrator.allocator.counts()["addrs:net"] == 9
    finally:
        for m in running:
            await m.stop()
