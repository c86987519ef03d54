"""A wait in the Raft driver ends when it is cancelled, even when what it
waited for completes in the same moment.

On Python 3.11, `asyncio.wait_for` returns the result and drops the
cancellation in that case; a leader-only component stopping at step-down
while a proposal or read completed would then never end (seen at 1,000
simulated nodes: the next term ran no orchestrator)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from manager.raft.driver import RaftNode, RaftSettings
from manager.store import MemoryStore
from tests.harness.managers import free_port


async def test_a_cancelled_wait_raises_even_as_its_index_is_applied(tmp_path: Path) -> None:
    raft = RaftNode(1, str(tmp_path / "raft"), MemoryStore(), initial_members={1: f"127.0.0.1:{free_port()}"},
                    settings=RaftSettings(tick_interval=0.02))
    await raft.start()
    try:
        index = raft.applied + 1000
        task = asyncio.create_task(raft.wait_applied(index, timeout=30))
        await asyncio.sleep(0)  # it registered its waiter and awaits it
        (waiter,) = raft._apply_waiters[index]
        waiter.set_result(None)  # what it waited for comes...
        task.cancel()  # ...as the caller is cancelled
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await raft.stop()
