"""The leader's orchestrator loop honours `depends_on` on real Raft: the
dependents wait PENDING with the reason, and a dependency's task reported
RUNNING wakes the loop at once (no timer: the idle pass is set far away),
which schedules them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from api.objects import DependsCondition, ServiceDependency, Task, TaskState, TaskStatus, evolve
from manager.orchestrator.loop import Orchestrator
from manager.raft.driver import RaftNode, RaftSettings
from manager.store import Create, MemoryStore, Update
from manager.tx import commit
from tests.harness.managers import free_port
from tests.orchestrator.test_reconcile import mknode, mkservice
from tests.harness.wait import until_async


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    await until_async(cond, timeout, what, interval=0.005)


async def test_a_dependency_that_starts_wakes_the_loop_and_releases_its_dependents(tmp_path: Path) -> None:
    store = MemoryStore()
    raft = RaftNode(1, str(tmp_path / "raft"), store, initial_members={1: f"127.0.0.1:{free_port()}"},
                    settings=RaftSettings(tick_interval=0.02))
    await raft.start()
    orch = Orchestrator(raft, store, idle=60.0)
    runner: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: raft.is_leader, "the node leads", timeout=10)
        runner = asyncio.create_task(orch.lead())
        front = evolve(mkservice("front", 2), spec__depends_on=(
            ServiceDependency(service="back", condition=DependsCondition.SERVICE_HEALTHY),))
        await commit(raft, store, [Create("nodes", mknode("n1")), Create("services", mkservice("back", 1)),
                                   Create("services", front)])

        def tasks(sid: str) -> list[Task]:
            return list(store.view().find("tasks", "service_id", sid))

        await eventually(lambda: [t.status.state for t in tasks("back")] == [TaskState.ASSIGNED], "back is assigned")
        why = 'waiting for service "back" (service_healthy: 0 of 1 task running and healthy)'
        await eventually(lambda: [(t.status.state, t.status.message) for t in tasks("front")]
                         == [(TaskState.PENDING, why)] * 2, "front waits with the reason")
        # Waiting is quiet: once the passes that follow its own writes are done, the loop sleeps.
        async def quiet() -> bool:
            for _ in range(25):
                passes = orch.passes
                await asyncio.sleep(0.2)
                if orch.passes == passes:
                    return True
            return False

        assert await quiet(), "the loop spins while front waits"

        # The agent reports back's task healthy (RUNNING): front is scheduled well before the idle pass.
        (b,) = tasks("back")
        t0 = time.monotonic()
        await commit(raft, store, [Update("tasks", evolve(b, status=TaskStatus(state=TaskState.RUNNING,
                                                                                 timestamp=time.time())))])
        await eventually(lambda: [t.status.state for t in tasks("front")] == [TaskState.ASSIGNED] * 2,
                         "front is scheduled")
        assert time.monotonic() - t0 < 5.0
    finally:
        # Cancelled again until it ends, as the leadership supervisor does: on
        # 3.11 a cancellation that arrives as a Raft proposal completes is
        # lost inside RaftNode.propose's asyncio.wait_for.
        while runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner], timeout=0.5)
        await raft.stop()
