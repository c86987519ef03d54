"""`orch service exec` routed in one process: a real single-member Raft
manager with its dispatcher and the `/v1/exec` websocket, the agent's real
session and worker, and a real runc container the process runs in (the
worker's tasks themselves run on the in-memory engine). Checks output and
status, stdin, the record of each exec, refusals, and a node whose session
ends mid-exec."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.runtime.execproc import ExecProcess
from agent.runtime.runtime import ContainerManager
from agent.runtime.spec import ContainerSpec as RuntimeSpec
from agent.session import AgentSession
from agent.worker import Worker
from api.objects import ContainerSpec, Node, NodeRole, NodeSpec, Service, ServiceSpec, Task, TaskSpec, TaskState
from api.objects import TaskStatus
from api.session import ExecStart
from manager import store as store_ops
from manager.dispatcher import Dispatcher, DispatcherSettings
from manager.execapi import EXEC_PATH, ExecAPI
from manager.raft.driver import RaftNode, RaftSettings
from manager.store import MemoryStore
from manager.tx import commit
from tests.agent.fake_engine import FakeEngine
from tests.harness.wait import until_async
from tests.runtime.conftest import mgr  # noqa: F401  (the real container manager fixture)
from tests.runtime.test_execproc import rootfs  # noqa: F401

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not (shutil.which("runc") and shutil.which("conmon") and os.path.exists("/bin/busybox")),
                       reason="needs runc, conmon and busybox-static"),
]


class ExecEngine(FakeEngine):
    """The in-memory engine, but exec runs in one real container."""

    def __init__(self, containers: ContainerManager, cid: str) -> None:
        super().__init__()
        self.containers, self.cid = containers, cid

    def exec_process(self, cid: str, start: ExecStart) -> ExecProcess:
        return ExecProcess(self.containers, self.cid, start.argv, tty=start.tty, stdin=start.stdin,
                           width=start.width, height=start.height)


@pytest.fixture
async def world(tmp_path: Path, mgr: ContainerManager, rootfs: Path  # noqa: F811
                ) -> AsyncIterator[tuple[str, AgentSession, Worker, list[tuple[Any, ...]]]]:
    rec = await mgr.run(RuntimeSpec(args=["sleep", "60"]), str(rootfs), {})
    store = MemoryStore()
    raft = RaftNode(1, str(tmp_path / "raft"), store, initial_members={1: "127.0.0.1:1"},
                    settings=RaftSettings(tick_interval=0.01))
    raft.open()
    await raft.start()
    await until_async(lambda: raft.is_leader, 10, "a leader")
    d = Dispatcher(raft, store, lambda request: "n1", DispatcherSettings(period=0.2))
    records: list[tuple[Any, ...]] = []
    api = ExecAPI(raft, store, d, caller=lambda r: ("tester", False),
                  record_exec=lambda *a: records.append(a))
    app = web.Application()
    d.attach(app)
    app.router.add_get(EXEC_PATH, api.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    addr = f"127.0.0.1:{runner.addresses[0][1]}"
    leading = asyncio.create_task(d.lead())
    spec = TaskSpec(container=ContainerSpec(image="busybox"))
    await commit(raft, store, [
        store_ops.Create("nodes", Node(id="n1", spec=NodeSpec(role=NodeRole.WORKER))),
        store_ops.Create("services", Service(id="svc", spec=ServiceSpec(name="web", task=spec))),
        store_ops.Create("tasks", Task(id="t1", service_id="svc", slot=1, node_id="n1", spec=spec,
                                       status=TaskStatus(state=TaskState.ASSIGNED)))])
    holder: dict[str, AgentSession] = {}

    async def send(f: Any) -> bool:
        return await holder["s"].send(f)

    worker = Worker(ExecEngine(mgr, rec.id), send)
    s = holder["s"] = AgentSession([addr], None, lambda: {"hostname": "h1"}, on_message=worker.on_message)
    worker.start()
    s.start()
    await until_async(lambda: store.view().get("tasks", "t1").status.state == TaskState.RUNNING, 10, "t1 RUNNING")
    try:
        yield addr, s, worker, records
    finally:
        await s.stop()
        await worker.stop()
        leading.cancel()
        await asyncio.gather(leading, return_exceptions=True)
        await d.stop()
        await runner.cleanup()
        await raft.stop()


async def run(addr: str, req: dict[str, Any], stdin: bytes | None = None,
              after_start: Any = None) -> tuple[bytes, bytes, dict[str, Any]]:
    out = {1: b"", 2: b""}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"http://{addr}{EXEC_PATH}") as ws:
            await ws.send_str(json.dumps(req))
            async for m in ws:
                if m.type == aiohttp.WSMsgType.BINARY:
                    out[m.data[0]] += m.data[1:]
                    continue
                msg = json.loads(m.data)
                if "started" in msg:
                    if stdin is not None:
                        await ws.send_bytes(stdin)
                        await ws.send_str(json.dumps({"eof": True}))
                    if after_start is not None:
                        await after_start()
                    continue
                return out[1], out[2], msg
    raise AssertionError("the exec ended without an exit or an error")


async def test_exec_routed_through_the_session(
        world: tuple[str, AgentSession, Worker, list[tuple[Any, ...]]]) -> None:
    addr, session, worker, records = world
    out, err, end = await run(addr, {"target": "web", "cmd": ["sh", "-c", "head -c 3000000 /dev/zero; echo e >&2; "
                                                                          "exit 4"]})
    assert (len(out), set(out), err, end) == (3000000, {0}, b"e\n", {"exit": 4})
    assert records == [("web", "t1", "n1", ("sh", "-c", "head -c 3000000 /dev/zero; echo e >&2; exit 4"), "tester")]
    out, _, end = await run(addr, {"target": "web.1", "cmd": ["cat"], "stdin": True}, stdin=b"x" * 300000)
    assert (len(out), end) == (300000, {"exit": 0})
    _, _, end = await run(addr, {"target": "nosuch", "cmd": ["true"]})
    assert "no service or task 'nosuch'" in end["error"]
    _, _, end = await run(addr, {"target": "web"})
    assert "cmd: must be a non-empty list" in end["error"]
    assert len(records) == 2  # refusals are not execs

    async def drop_session() -> None:
        await until_async(lambda: worker.execs.running, 10, "the exec running on the agent")
        await session.stop()

    _, _, end = await run(addr, {"target": "t1", "cmd": ["sleep", "30"]}, after_start=drop_session)
    assert "session ended during the exec" in end["error"]
    # Its process runs on with nobody to read it until the agent has a new
    # session: then it is killed.
    assert len(worker.execs.running) == 1
    session.start()
    await until_async(lambda: not worker.execs.running, 10, "the orphaned exec killed")


async def test_the_cli_in_a_terminal(world: tuple[str, AgentSession, Worker, list[tuple[Any, ...]]]) -> None:
    """`orch service exec -it` run from a terminal (a pty here): its terminal
    goes raw, what is typed reaches the command's terminal (of the same size),
    the output comes back, the exit status is the command's, and the
    terminal is restored after."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios
    import time

    addr = world[0]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    before = termios.tcgetattr(slave)
    p = subprocess.Popen([sys.executable, "-m", "cli.main", "--host", addr, "service", "exec", "-it", "web",
                          "sh", "-c", "read l; stty size; echo got $l; exit 3"],
                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while termios.tcgetattr(master)[3] & termios.ECHO:  # until the CLI made its terminal raw
            assert time.monotonic() < deadline and p.poll() is None, "the CLI never made its terminal raw"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # runc sets the terminal's size just after the process started
        os.write(master, b"typed\r")
        while p.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            while select.select([master], [], [], 0)[0]:
                seen += os.read(master, 65536)
        assert p.poll() == 3, seen
        while select.select([master], [], [], 0)[0]:
            seen += os.read(master, 65536)
        assert b"33 111" in seen and b"got typed" in seen, seen
        assert termios.tcgetattr(slave) == before
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        os.close(slave)
        os.close(master)
