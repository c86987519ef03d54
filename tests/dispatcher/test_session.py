"""Agent sessions end to end in one process: a real single-member Raft
manager with its store and dispatcher on a loopback websocket, and the
agent's real session and worker (over an in-memory engine). Checks what
crosses the wire: the full set once, then change frames only when the node
must act; status reports reach the store; bad frames are refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web

from agent.session import AgentSession
from agent.worker import Worker
from api.objects import (
    ContainerSpec,
    Node,
    NodeRole,
    NodeSpec,
    NodeState,
    Secret,
    SecretReference,
    SecretSpec,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    evolve,
)
from api.session import (
    SESSION_PATH,
    AssignmentChanges,
    AssignmentsFull,
    Close,
    Frame,
    LogLines,
    Register,
    decode,
    encode,
)
from manager import store as store_ops
from manager.dispatcher import Dispatcher, DispatcherSettings, DispatcherSettingsError
from manager.raft.driver import RaftNode, RaftSettings
from pki.secretbox import new_key, seal
from manager.store import MemoryStore
from manager.tx import commit
from tests.agent.fake_engine import FakeEngine
from tests.harness.wait import until_async

KEY = new_key()


async def until(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    return await until_async(cond, timeout, what, interval=0.02)


@dataclass
class Manager:
    raft: RaftNode
    store: MemoryStore
    dispatcher: Dispatcher
    addr: str
    leading: asyncio.Task[None]  # the dispatcher's lead(), as the leadership supervisor runs it

    async def stop(self) -> None:
        self.leading.cancel()
        await asyncio.gather(self.leading, return_exceptions=True)
        await self.dispatcher.stop()

    async def tx(self, *ops: Any) -> None:
        await commit(self.raft, self.store, list(ops))

    def task(self, tid: str) -> Task:
        t = self.store.view().get("tasks", tid)
        assert t is not None
        return t


async def start_manager(tmp: Path, settings: DispatcherSettings) -> tuple[Manager, web.AppRunner]:
    store = MemoryStore()
    raft = RaftNode(1, str(tmp / "raft"), store, initial_members={1: "127.0.0.1:1"},
                    settings=RaftSettings(tick_interval=0.01))
    raft.open()
    await raft.start()
    await until(lambda: raft.is_leader, "a leader")
    d = Dispatcher(raft, store, lambda request: request.query.get("node") or "n1", settings,
                   secrets_key=lambda: KEY)
    app = web.Application()
    d.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    m = Manager(raft, store, d, f"127.0.0.1:{port}", asyncio.create_task(d.lead()))
    await m.tx(store_ops.Create("nodes", Node(id="n1", spec=NodeSpec(role=NodeRole.MANAGER))),
               store_ops.Create("services", Service(id="svc", spec=ServiceSpec(
                   name="web", task=TaskSpec(container=ContainerSpec(image="busybox"))))),
               store_ops.Create("secrets", Secret(id="s1", spec=SecretSpec(name="pw", data=seal(KEY, "s1", b"pw!")))))
    return m, runner


def mktask(tid: str, *, secret: bool = False) -> Task:
    refs = (SecretReference(secret_id="s1", secret_name="pw"),) if secret else ()
    return Task(id=tid, service_id="svc", slot=1, node_id="n1", spec_version=1,
                spec=TaskSpec(container=ContainerSpec(image="busybox", secrets=refs)),
                status=TaskStatus(state=TaskState.ASSIGNED))


@dataclass
class Agent:
    session: AgentSession
    worker: Worker
    engine: FakeEngine
    frames: list[Frame]
    roles: list[str]

    def kinds(self) -> list[str]:
        return [f.KIND for f in self.frames]


async def start_agent(m: Manager) -> Agent:
    engine = FakeEngine()
    frames: list[Frame] = []
    roles: list[str] = []
    holder: dict[str, AgentSession] = {}

    async def send(f: Frame) -> bool:
        return await holder["s"].send(f)

    worker = Worker(engine, send)

    def on_message(f: Frame) -> None:
        frames.append(f)
        worker.on_message(f)

    s = AgentSession([m.addr], None, lambda: {"hostname": "h1", "os": "linux", "arch": "amd64"}, addr="10.0.0.1",
                     on_message=on_message, on_role=roles.append)
    holder["s"] = s
    worker.start()
    s.start()
    return Agent(s, worker, engine, frames, roles)


@pytest.fixture(params=[False, True], ids=["changes", "full-sets"])
async def world(request: Any, tmp_path: Path) -> AsyncIterator[tuple[Manager, Callable[[], Any], bool]]:
    """The manager, a function that starts the agent, and whether full sets are on."""
    full_sets = request.param
    m, runner = await start_manager(tmp_path, DispatcherSettings(period=0.2, full_sets=full_sets))
    agents: list[Agent] = []

    async def agent() -> Agent:
        agents.append(await start_agent(m))
        return agents[-1]

    try:
        yield m, agent, full_sets
    finally:
        for a in agents:
            await a.session.stop()
            await a.worker.stop()
        await m.stop()
        await runner.cleanup()
        await m.raft.stop()


async def test_assignments_cross_as_full_set_then_changes(world: tuple[Manager, Any, bool]) -> None:
    m, agent, full_sets = world
    await m.tx(store_ops.Create("tasks", mktask("t1", secret=True)), store_ops.Create("tasks", mktask("t2")))
    a = await agent()
    await until(lambda: a.session.state.connected, "a session")
    node = await until(lambda: (n := m.store.view().get("nodes", "n1")) and n.status.state == NodeState.READY and n,
                       "the node READY")
    assert node.description.hostname == "h1" and node.status.addr == "10.0.0.1"
    # Running, as reported by the worker through status frames into the store.
    await until(lambda: all(m.task(t).status.state == TaskState.RUNNING for t in ("t1", "t2")), "tasks RUNNING")
    assert a.engine.files["t1"][0]["data"] == b"pw!"  # opened by the manager for this node
    await asyncio.sleep(0.2)
    if full_sets:  # the old protocol: the whole set again after every status write
        assert set(a.kinds()) == {"assign_full"} and len(a.kinds()) > 1
    else:  # the status writes are the node's own news: nothing sent back
        assert a.kinds() == ["assign_full"]
    a.frames.clear()
    # One task wanted stopped: one change frame (or a full set); a task wanted
    # stopped needs no secret, so the secret goes with it. The worker stops it,
    # reports SHUTDOWN, and the task leaves the set.
    await m.tx(store_ops.Update("tasks", evolve(m.task("t1"), desired_state=TaskState.SHUTDOWN)))
    await until(lambda: m.task("t1").status.state == TaskState.SHUTDOWN, "t1 SHUTDOWN")
    await until(lambda: ("remove", "t1") in a.engine.calls, "t1's container removed")
    if full_sets:
        assert set(a.kinds()) == {"assign_full"}
    else:
        ops = [[c.op for c in f.changes] for f in a.frames if isinstance(f, AssignmentChanges)]
        assert ops == [["task_update", "secret_remove"], ["task_remove"]]
    assert set(a.worker.assigned.tasks) == {"t2"} and a.worker.assigned.secrets == {}
    # What was sent, as the stats route counts it.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{m.addr}/v1/dispatcher/stats") as r:
            stats = await r.json()
    assert stats["sessions"] == 1 and stats["full_sets"] == full_sets and stats["assignment_cpu_s"] > 0
    kinds = {"assign_full"} if full_sets else {"assign_full", "assign_changes"}
    assert kinds <= set(stats["frames"]) and all(stats["bytes"][k] > 0 for k in kinds)
    if not full_sets:
        assert (stats["frames"]["assign_full"], stats["frames"]["assign_changes"]) == (1, 2)


async def test_heartbeats_carry_the_desired_role_and_logs_flow(world: tuple[Manager, Any, bool]) -> None:
    m, agent, _ = world
    a = await agent()
    await until(lambda: a.session.state.heartbeats >= 2, "heartbeat acks")
    assert set(a.roles) == {"manager"}
    await m.tx(store_ops.Create("tasks", mktask("t1")))
    await until(lambda: m.task("t1").status.state == TaskState.RUNNING, "t1 RUNNING")
    a.engine.logs_of["t1"] = [("2024-01-01T00:00:00Z", "stdout", "hello")]
    got = [f async for f in m.dispatcher.logs({"n1": ["t1"], "n2": ["x"]}, follow=False, tail=None)]
    lines = [ln for f in got if isinstance(f, LogLines) for ln in f.lines]
    assert lines == [("2024-01-01T00:00:00Z", "stdout", "hello")]
    ends = {f.task: f.error for f in got if not isinstance(f, LogLines)}
    assert ends == {"t1": "", "x": "node n2 is not connected"}


async def test_bad_frames_are_refused_with_what_was_wrong(tmp_path: Path) -> None:
    m, runner = await start_manager(tmp_path, DispatcherSettings(period=0.2))
    try:
        url = f"http://{m.addr}{SESSION_PATH}"
        async with aiohttp.ClientSession() as http:
            # A register frame with a bad field: refused, naming it.
            async with http.ws_connect(url) as ws:
                await ws.send_bytes(msgpack.packb({"t": "register", "description": {"nano_cpus": -1}}))
                f = decode((await ws.receive(timeout=5)).data)
                assert isinstance(f, Close)
                assert "'register'" in f.message and "description.nano_cpus" in f.message
            # A frame of the manager's kind from an agent.
            async with http.ws_connect(url) as ws:
                await ws.send_bytes(encode(AssignmentsFull()))
                f = decode((await ws.receive(timeout=5)).data)
                assert isinstance(f, Close) and "not accepted in this direction" in f.message
            # Garbage mid-session closes the session; the manager keeps serving.
            async with http.ws_connect(url + "?node=n1") as ws:
                await ws.send_bytes(encode(Register(addr="10.0.0.9")))
                assert decode((await ws.receive(timeout=5)).data).KIND == "session"
                assert decode((await ws.receive(timeout=5)).data).KIND == "assign_full"
                await ws.send_bytes(b"\xc1garbage")
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE
            await until(lambda: not m.dispatcher.sessions, "the session dropped")
            async with http.ws_connect(url) as ws:
                await ws.send_bytes(encode(Register()))
                assert decode((await ws.receive(timeout=5)).data).KIND == "session"
    finally:
        await m.stop()
        await runner.cleanup()
        await m.raft.stop()


def test_settings_are_validated_with_the_field_named() -> None:
    for kw, field, words in [
        ({"period": 0}, "period", "must be > 0"),
        ({"period": float("nan")}, "period", "finite"),
        ({"down_after": 0.5}, "down_after", ">= 1"),
        ({"check_interval": -1}, "check_interval", "> 0"),
        ({"assign_coalesce": -0.1}, "assign_coalesce", ">= 0"),
        ({"status_coalesce": "fast"}, "status_coalesce", "finite number"),
        ({"outbox_frames": 0}, "outbox_frames", ">= 1"),
        ({"full_sets": "yes"}, "full_sets", "true or false"),
    ]:
        with pytest.raises(DispatcherSettingsError) as e:
            DispatcherSettings(**kw)
        assert e.value.field == field and str(e.value).startswith(f"DispatcherSettings.{field}: ")
        assert words in str(e.value)
    s = DispatcherSettings()
    s.period = -1  # changed after construction: the dispatcher checks again
    with pytest.raises(DispatcherSettingsError, match="period"):
        Dispatcher(None, MemoryStore(), lambda r: None, s)  # type: ignore[arg-type]


def test_every_settings_field_is_documented() -> None:
    import ast
    import inspect
    import textwrap
    from dataclasses import fields

    body = ast.parse(textwrap.dedent(inspect.getsource(DispatcherSettings))).body[0].body  # type: ignore[attr-defined]
    documented = {
        node.target.id: nxt.value.value
        for node, nxt in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
    }
    for f in fields(DispatcherSettings):
        doc = documented.get(f.name, "")
        assert "Default" in doc, f"DispatcherSettings.{f.name} lacks a docstring saying its default"
