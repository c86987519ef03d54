"""A node whose session registers while a liveness check runs is not marked
DOWN by that check (it would stay DOWN while its session lives: heartbeats
do not write the store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import manager.dispatcher.dispatcher as dispatcher_module
from api.objects import NodeState, evolve
from api.session import SESSION_PATH, Register, encode
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


async def test_a_step_down_does_not_wait_for_a_peer_that_never_answers_its_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp waits 10 s for a peer's close; the dispatcher closes all its
    sessions at once and drops those that have not answered in CLOSE_WAIT."""
    monkeypatch.setattr(dispatcher_module, "CLOSE_WAIT", 0.2)
    m, runner = await start_manager(tmp_path, DispatcherSettings(period=0.2))
    http = aiohttp.ClientSession()
    try:
        # A node that registers and then never reads again (so never answers a close).
        ws = await http.ws_connect(f"http://{m.addr}{SESSION_PATH}?node=n1", autoclose=False)
        await ws.send_bytes(encode(Register(addr="10.0.0.1")))
        assert (await ws.receive()).type == aiohttp.WSMsgType.BINARY  # session started
        await until(lambda: "n1" in m.dispatcher.sessions, "the session registered")
        sess = m.dispatcher.sessions["n1"]
        real_close = sess.ws.close

        async def close_unanswered(**kw: Any) -> bool:
            await asyncio.Event().wait()  # the peer's answer never comes (cancelled by the dispatcher)
            return await real_close(**kw)

        monkeypatch.setattr(sess.ws, "close", close_unanswered)
        m.leading.cancel()
        done, _ = await asyncio.wait({m.leading}, timeout=5)
        assert done, "the dispatcher's lead() did not end"
        assert m.dispatcher.sessions == {}
        runner._shutdown_timeout = 0.5  # its handler waits on a close the test never let happen
    finally:
        await http.close()
        await m.stop()
        await runner.cleanup()
        await m.raft.stop()
