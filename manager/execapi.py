"""`orch service exec` on the manager: the `/v1/exec` websocket.

The process runs on whichever node runs the task, through that node's
agent session (no port on agents): the leader's dispatcher holds the
sessions, so the leader serves the exec and a follower relays the
websocket to the leader, byte for byte. Managers only, as every control
call (the manager's TLS middleware; root on the local socket).

The websocket, client side:

1. first message, text: `{"target": "SERVICE[.SLOT]" | "TASK_ID" |
   "SERVICE.SLOT.TASK_ID", "cmd": [...], "tty": bool, "stdin": bool,
   "user": "", "env": ["K=V"], "workdir": "", "width": int, "height": int}`;
2. then binary messages are stdin; text messages `{"resize": [w, h]}` and
   `{"eof": true}` (stdin ended).

Server side: text `{"started": {"service", "task", "node"}}` once the
process was asked for, binary messages are output (first byte 1 = stdout,
2 = stderr, then the bytes), and the last message is text `{"exit": code}`
or `{"error": "..."}` (nothing ran, or the exec broke off).

Output is acknowledged to the agent as it is passed on to the client, so
a slow client slows the process down (`api.session.EXEC_WINDOW`); input is
sent at most `EXEC_WINDOW` bytes ahead of the agent's acknowledgements.

Every exec is recorded through `ExecAPI.record_exec(service, task, node,
argv, user)` (by default an INFO line in the manager's log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from api.objects import Task, TaskState
from api.session import (
    EXEC_CHUNK,
    EXEC_WINDOW,
    ExecCancel,
    ExecExit,
    ExecInput,
    ExecInputAck,
    ExecOutput,
    ExecOutputAck,
    ExecResize,
    ExecStart,
    Frame,
    FrameError,
)
from manager.controlapi.common import resolve
from manager.controlapi.errors import HTTPError
from manager.dispatcher import Dispatcher
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore

log = logging.getLogger(__name__)

__all__ = ["EXEC_PATH", "ExecAPI", "ExecRefused", "find_task", "log_exec"]

EXEC_PATH = "/v1/exec"
MAX_INPUT_FRAMES = 64  # input frames in flight to the agent (the session's outbox is bounded in frames)
START_FIELDS = {"target", "cmd", "tty", "stdin", "user", "env", "workdir", "width", "height", "caller"}


class ExecRefused(Exception):
    """The exec cannot run: the message says why and what to do."""


RecordExec = Callable[[str, str, str, tuple[str, ...], str], None]


def log_exec(service: str, task: str, node: str, argv: tuple[str, ...], user: str) -> None:
    """The default record of an exec: one INFO line."""
    log.info("exec service=%s task=%s node=%s user=%s cmd=%s", service, task, node, user, json.dumps(list(argv)))


def find_task(store: MemoryStore, target: str) -> tuple[str, Task]:
    """The running task `target` names, with its service's name: a task id
    (or unique prefix), `SERVICE.SLOT.TASK_ID` (as `service ps` names tasks),
    `SERVICE.SLOT`, `SERVICE.NODE_ID` (global services), or `SERVICE` (its
    running task of the lowest slot). Raises ExecRefused."""
    view = store.view()
    if not target:
        raise ExecRefused("the target is empty: give SERVICE[.SLOT] or a task id")
    svc = None
    try:
        svc = resolve(store, "services", target)
        want: str | None = None
    except HTTPError:
        name, _, want = target.partition(".")
        try:
            svc = resolve(store, "services", name) if want else None
        except HTTPError:
            svc = None
    if svc is None:
        task = view.get("tasks", target)
        if task is None:
            matches = [t for t in view.list("tasks") if t.id.startswith(target)] if len(target) >= 4 else []
            if len(matches) > 1:
                raise ExecRefused(f"task reference {target!r} is ambiguous: {len(matches)} task ids start with it")
            if not matches:
                raise ExecRefused(f"no service or task {target!r}: give SERVICE[.SLOT] or a task id "
                                  "(see `orch service ls` and `orch service ps SERVICE`)")
            task = matches[0]
        owner = view.get("services", task.service_id) if task.service_id else None
        return _running(owner.spec.name if owner is not None else "", task, f"task {task.id}")
    tasks = list(view.find("tasks", "service_id", svc.id))
    name = svc.spec.name
    if want is None:
        running = sorted((t for t in tasks if _is_running(t)), key=lambda t: (t.slot, t.id))
        if not running:
            raise ExecRefused(f"service {name} has no running task")
        return name, running[0]
    slot_s, _, tid = want.partition(".")
    if tid:
        ts = [t for t in tasks if t.id.startswith(tid)]
        if len(ts) != 1:
            raise ExecRefused(f"service {name} has no task {tid!r}" if not ts
                              else f"task reference {tid!r} is ambiguous in service {name}")
        return _running(name, ts[0], f"task {name}.{want}")
    if slot_s.isdigit():
        ts = [t for t in tasks if t.slot == int(slot_s)]
        what = f"{name}.{slot_s}"
    else:
        ts = [t for t in tasks if t.node_id.startswith(slot_s) and not t.slot]
        what = f"{name} on node {slot_s}"
    if not ts:
        raise ExecRefused(f"service {name} has no task {what} (see `orch service ps {name}`)")
    running = [t for t in ts if _is_running(t)]
    if running:
        return name, running[0]
    latest = max(ts, key=lambda t: t.meta.version)
    return _running(name, latest, f"task {what}")


def _is_running(t: Task) -> bool:
    return t.status.state == TaskState.RUNNING and t.desired_state <= TaskState.RUNNING and bool(t.node_id)


def _running(service: str, t: Task, what: str) -> tuple[str, Task]:
    if not _is_running(t):
        state = t.status.state.name.lower()
        why = f" ({t.status.err or t.status.message})" if (t.status.err or t.status.message) else ""
        if t.status.state == TaskState.RUNNING:
            state = "running but being shut down"
        raise ExecRefused(f"{what} is not running: it is {state}{why}")
    return service, t


@dataclass
class _Start:
    target: str
    argv: tuple[str, ...]
    tty: bool
    stdin: bool
    user: str
    env: tuple[str, ...]
    workdir: str
    width: int
    height: int
    caller: str


def parse_start(text: str) -> _Start:
    """The client's first message; ExecRefused naming the field that is wrong."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ExecRefused(f"the first message must be a JSON object: {e}") from None
    if not isinstance(d, dict):
        raise ExecRefused("the first message must be a JSON object")
    unknown = set(d) - START_FIELDS
    if unknown:
        raise ExecRefused(f"unknown field {sorted(unknown)[0]!r} in the exec request")
    cmd = d.get("cmd")
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd) or not cmd[0]:
        raise ExecRefused("cmd: must be a non-empty list of strings (the command and its arguments)")
    env = d.get("env", [])
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise ExecRefused("env: must be a list of NAME=value strings")
    for f in ("target", "user", "workdir", "caller"):
        if not isinstance(d.get(f, ""), str):
            raise ExecRefused(f"{f}: must be a string")
    for f in ("tty", "stdin"):
        if not isinstance(d.get(f, False), bool):
            raise ExecRefused(f"{f}: must be true or false")
    size = []
    for f, default in (("width", 80), ("height", 24)):
        v = d.get(f, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise ExecRefused(f"{f}: must be an integer from 1 to 65535")
        size.append(v)
    return _Start(d.get("target", ""), tuple(cmd), d.get("tty", False), d.get("stdin", False), d.get("user", ""),
                  tuple(env), d.get("workdir", ""), size[0], size[1], d.get("caller", ""))


class ExecAPI:
    """Serves `EXEC_PATH` on a manager.

    `caller(request)` names who asks (for the record; "" = unknown) and
    says whether the peer may speak for another caller (a relaying manager);
    `relay_ssl()` is the client TLS context to reach the leader with (None =
    plain HTTP); `record_exec` is called once per exec that starts."""

    def __init__(self, raft: RaftNode, store: MemoryStore, dispatcher: Dispatcher, *,
                 caller: Callable[[web.Request], tuple[str, bool]] = lambda r: ("", False),
                 relay_ssl: Callable[[], ssl.SSLContext | None] = lambda: None,
                 record_exec: RecordExec = log_exec) -> None:
        self.raft = raft
        self.store = store
        self.dispatcher = dispatcher
        self.caller = caller
        self.relay_ssl = relay_ssl
        self.record_exec: RecordExec = record_exec

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=4 << 20, heartbeat=None)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=30)
        except asyncio.TimeoutError:
            await _fail(ws, "no exec request within 30 s")
            return ws
        if first.type != WSMsgType.TEXT:
            await _fail(ws, "the first message must be the exec request (JSON text)")
            return ws
        try:
            start = parse_start(first.data)
        except ExecRefused as e:
            await _fail(ws, str(e))
            return ws
        who, may_relay = self.caller(request)
        user = start.caller if (start.caller and may_relay) else who
        try:
            if not self.raft.is_leader:
                await self._relay(ws, first.data, user)
            else:
                await self._exec(ws, start, user)
        except ExecRefused as e:
            await _fail(ws, str(e))
        except (ConnectionError, aiohttp.ClientError, asyncio.TimeoutError) as e:
            await _fail(ws, f"exec broke off: {e or type(e).__name__}")
        return ws

    async def _relay(self, ws: web.WebSocketResponse, first: str, user: str) -> None:
        """A follower: the same websocket, to the leader."""
        leader = self.raft.members.get(self.raft.lead) if self.raft.lead else None
        if not leader:
            raise ExecRefused("no leader to run the exec through; retry shortly")
        ctx = self.relay_ssl()
        url = f"{'https' if ctx is not None else 'http'}://{leader}{EXEC_PATH}"
        d = json.loads(first)
        d["caller"] = user
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx or False)) as s:
            try:
                up = await s.ws_connect(url, max_msg_size=4 << 20, heartbeat=None)
            except aiohttp.WSServerHandshakeError as e:
                raise ExecRefused(f"the leader {leader} refused the exec: {e.status} {e.message}") from None
            async with up:
                await up.send_str(json.dumps(d))

                async def down() -> None:
                    async for m in up:
                        if m.type == WSMsgType.BINARY:
                            await ws.send_bytes(m.data)
                        elif m.type == WSMsgType.TEXT:
                            await ws.send_str(m.data)
                        else:
                            break

                async def upward() -> None:
                    async for m in ws:
                        if m.type == WSMsgType.BINARY:
                            await up.send_bytes(m.data)
                        elif m.type == WSMsgType.TEXT:
                            await up.send_str(m.data)
                        else:
                            break

                await _first_of(down(), upward())
        await ws.close()

    async def _exec(self, ws: web.WebSocketResponse, st: _Start, user: str) -> None:
        try:
            await self.raft.read_barrier()
        except RaftError as e:
            raise ExecRefused(f"cannot read the cluster state now: {e}; retry shortly") from None
        service, task = find_task(self.store, st.target)
        node = task.node_id
        xid = secrets.token_hex(8)
        frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.dispatcher.exec_open(node, xid, frames.put_nowait)
        ended = False
        try:
            try:
                start = ExecStart(id=xid, task=task.id, argv=st.argv, tty=st.tty, stdin=st.stdin, user=st.user,
                                  env=st.env, workdir=st.workdir, width=st.width, height=st.height)
            except FrameError as e:
                raise ExecRefused(str(e)) from None
            if not self.dispatcher.send(node, start):
                raise ExecRefused(f"node {node} of task {task.id} is not connected to the leader; "
                                  "retry when it is (see `orch node ls`)")
            try:
                self.record_exec(service, task.id, node, st.argv, user)
            except Exception:  # a broken recorder must not break the exec
                log.exception("recording exec %s failed", xid)
            await ws.send_str(json.dumps({"started": {"service": service, "task": task.id, "node": node}}))
            in_window = _Window()

            async def output() -> None:
                nonlocal ended
                while True:
                    m = await frames.get()
                    if m is None:
                        ended = True
                        raise ExecRefused(f"node {node}'s session ended during the exec")
                    if isinstance(m, ExecOutput):
                        await ws.send_bytes(bytes((m.stream,)) + m.data)
                        self.dispatcher.send(node, ExecOutputAck(id=xid, n=len(m.data)))
                    elif isinstance(m, ExecInputAck):
                        in_window.release(m.n)
                    elif isinstance(m, ExecExit):
                        ended = True
                        if m.error:
                            raise ExecRefused(m.error)
                        await ws.send_str(json.dumps({"exit": m.code}))
                        return

            async def inputs() -> None:
                async for m in ws:
                    if m.type == WSMsgType.BINARY:
                        data = bytes(m.data)
                        for i in range(0, len(data), EXEC_CHUNK):
                            chunk = data[i:i + EXEC_CHUNK]
                            await in_window.acquire(len(chunk))
                            self.dispatcher.send(node, ExecInput(id=xid, data=chunk))
                    elif m.type == WSMsgType.TEXT:
                        ctl = _control(m.data)
                        if ctl is None:
                            continue
                        if "resize" in ctl:
                            w, h = ctl["resize"]
                            self.dispatcher.send(node, ExecResize(id=xid, width=w, height=h))
                        if ctl.get("eof"):
                            self.dispatcher.send(node, ExecInput(id=xid, eof=True))
                    else:
                        break
                # The client went away: nothing will read the output (the
                # process is cancelled below unless it ended already).

            await _first_of(output(), inputs())
        finally:
            self.dispatcher.exec_close(xid)
            if not ended:
                self.dispatcher.send(node, ExecCancel(id=xid))
        await ws.close()


def _control(text: str) -> dict[str, Any] | None:
    """A client's control message, or None when it is not a valid one."""
    try:
        d = json.loads(text)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    r = d.get("resize")
    if r is not None and not (isinstance(r, list) and len(r) == 2
                              and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 65535 for x in r)):
        return None
    return d


class _Window:
    """Bytes of input in flight to the agent (and frames: the session's
    outbox is bounded in frames)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.frames == 0 or (
                self.bytes + n <= EXEC_WINDOW and self.frames < MAX_INPUT_FRAMES))
            self.bytes += n
            self.frames += 1

    def release(self, n: int) -> None:
        self.bytes = max(0, self.bytes - n)
        self.frames = max(0, self.frames - 1)

        async def notify() -> None:
            async with self._cond:
                self._cond.notify_all()

        asyncio.ensure_future(notify())


async def _first_of(*coros: Any) -> None:
    """Run until the first one returns (or raises); cancel the others."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _fail(ws: web.WebSocketResponse, message: str) -> None:
    if not ws.closed:
        try:
            await ws.send_str(json.dumps({"error": message}))
            await ws.close()
        except (ConnectionError, RuntimeError):
            pass
