"""A node whose session registers while a liveness check runs is not marked
DOWN by that check (it would stay DOWN while its session lives: heartbeats
do not write the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import manager.dispatcher.dispatcher as dispatcher_module
from api.objects import NodeState, evolve
from manager import store as store_ops
from manager.dispatcher import DispatcherSettings
from manager.tx import commit

from .test_session import start_agent, start_manager, until


async def test_a_registration_racing_a_liveness_check_leaves_the_node_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, runner = await start_manager(tmp_path, DispatcherSettings(period=0.2, check_interval=3600))
    d = m.dispatcher
    now = [1000.0]
    d.clock = lambda: now[0]
    node = m.store.view().get("nodes", "n1")
    await m.tx(store_ops.Update("nodes", evolve(node, status__state=NodeState.DOWN)))
    d.leader_since = 0.0  # this manager has led for long: a node unheard of is overdue

    async def racing_commit(raft: Any, store: Any, ops: list[Any], **kw: Any) -> Any:
        result = await commit(raft, store, ops, **kw)
        if any(op.table == "nodes" and op.obj.status.state == NodeState.READY for op in ops):
            await d._check()  # the periodic check, run while the registration is in flight
        return result

    monkeypatch.setattr(dispatcher_module, "commit", racing_commit)
    agent = await start_agent(m)
    try:
        await until(lambda: agent.session.state.connected, "the session")
        await until(lambda: "n1" in d.sessions, "the session registered")
        assert m.store.view().get("nodes", "n1").status.state == NodeState.READY
    finally:
        await agent.session.stop()
        await agent.worker.stop()
        await m.stop()
        await runner.cleanup()
        await m.raft.stop()
