"""Agent sessions on the leader: registration, heartbeats, node liveness.

Every agent keeps one websocket to the leader's dispatcher (msgpack frames,
mutual TLS: the peer certificate says which node it is). Only the leader
dispatches: a follower answers a session with a redirect to the leader, and
a manager that loses leadership closes its sessions so agents move to the
new one.

Liveness: an agent heartbeats every `period` (with jitter, told to it at
registration). A node whose last heartbeat is older than
`period * down_after` (3 periods, as Swarm) is marked DOWN. A new leader
has no heartbeat history, so it gives every node that same grace from the
moment it took over before judging it: failover never marks healthy nodes
down. State changes are written in batches, one transaction per check.

Frames are the typed models of `api.session`. Assignments: a new session
gets the node's full set once, then only changes (tasks, secrets, configs
added, updated or removed), computed by `assignments.NodeAssignments` for
the tasks and objects each batch of store events touched: the work per
change is proportional to what changed, not to the node's set or the
cluster. Task status reports come back in batches and are written in
batches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from api import codec
from api.objects import (
    ContainerSpec,
    NetworkAttachmentConfig,
    Node,
    NodeDescription,
    NodeState,
    Secret,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    evolve,
)
from api.session import (
    AGENT_FRAMES,
    MAX_FRAME,
    SESSION_PATH,
    AssignmentChanges,
    AssignmentsFull,
    AttachRequest,
    AttachResult,
    Close,
    EXEC_AGENT_FRAMES,
    Frame,
    FrameError,
    Heartbeat,
    HeartbeatAck,
    LogCancel,
    LogEnd,
    LogLines,
    LogRequest,
    Redirect,
    Register,
    SessionStarted,
    StatusBatch,
    StatusUpdate,
    decode,
    encode,
)
from manager import store as store_ops
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.store.errors import WatchError
from manager.store.watch import Event
from manager.tx import TxFailed, commit

from .assignments import DepKey, NodeAssignments, endpoint_facts

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "DispatcherSettings", "DispatcherSettingsError", "DispatcherStats", "SESSION_PATH",
           "STATS_PATH", "MAX_FRAME"]

STATS_PATH = "/v1/dispatcher/stats"

CLOSE_WAIT = 2.0
"""Seconds the sessions being closed at a step-down get to answer their close."""


class DispatcherSettingsError(ValueError):
    """A `DispatcherSettings` field is out of range; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"DispatcherSettings.{field_name}: {message}")
        self.field = field_name


@dataclass
class DispatcherSettings:
    """How the dispatcher runs agent sessions. Checked when made and again
    by the Dispatcher (`validate()`); a bad value raises
    `DispatcherSettingsError` naming the field."""

    period: float = 5.0
    """Heartbeat period told to agents, in seconds (> 0). Agents beat at
    70-95% of it. Default 5 s, as Swarm."""

    down_after: float = 3.0
    """Heartbeat periods without a beat before a node is marked DOWN and its
    session closed (>= 1). Default 3 periods, as Swarm."""

    check_interval: float | None = None
    """Seconds between liveness checks (> 0). Default None: half a period."""

    assign_coalesce: float = 0.02
    """Seconds to wait after a store change before computing assignment
    changes, so one frame per node carries a burst (>= 0). Default 20 ms."""

    status_coalesce: float = 0.05
    """Seconds to collect agents' status reports into one store
    transaction (>= 0). Default 50 ms."""

    outbox_frames: int = 1024
    """Frames queued for one agent before it is deemed too slow and its
    session closed (>= 1; it reconnects and gets its full set). Default 1024."""

    full_sets: bool = False
    """Send a node its whole assignment set on every change to it, instead
    of the changes (how the protocol worked before change frames); for
    comparison (bench/fleet_scale.py --assignments) and as a fallback.
    Default False."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def number(name: str, *, gt: float | None = None, ge: float | None = None) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DispatcherSettingsError(name, f"must be a finite number (got {v!r})")
            if gt is not None and not v > gt:
                raise DispatcherSettingsError(name, f"must be > {gt:g} (got {v!r})")
            if ge is not None and not v >= ge:
                raise DispatcherSettingsError(name, f"must be >= {ge:g} (got {v!r})")

        number("period", gt=0)
        number("down_after", ge=1)
        if self.check_interval is not None:
            number("check_interval", gt=0)
        number("assign_coalesce", ge=0)
        number("status_coalesce", ge=0)
        if isinstance(self.outbox_frames, bool) or not isinstance(self.outbox_frames, int) or self.outbox_frames < 1:
            raise DispatcherSettingsError("outbox_frames", f"must be an integer >= 1 (got {self.outbox_frames!r})")
        if not isinstance(self.full_sets, bool):
            raise DispatcherSettingsError("full_sets", f"must be true or false (got {self.full_sets!r})")


@dataclass
class DispatcherStats:
    """Counters since the dispatcher was made (GET /v1/dispatcher/stats)."""

    frames: dict[str, int] = field(default_factory=dict)  # frames sent to agents, by kind
    bytes: dict[str, int] = field(default_factory=dict)  # their encoded size, by kind
    # Seconds of the event-loop thread's CPU spent computing and encoding
    # assignment frames (full sets and changes).
    assignment_cpu: float = 0.0


@dataclass
class _Session:
    node_id: str
    session_id: str
    ws: web.WebSocketResponse
    addr: str
    last_seen: float
    outbox: asyncio.Queue[Frame]
    transport: asyncio.BaseTransport | None = None  # the connection, to drop if a close is not answered
    assignments: NodeAssignments = field(init=False)

    def __post_init__(self) -> None:
        self.assignments = NodeAssignments(self.node_id)


class Dispatcher:
    def __init__(
        self,
        raft: RaftNode,
        store: MemoryStore,
        identify: Callable[[web.Request], str | None],
        settings: DispatcherSettings | None = None,
        *,
        manager_addrs: Callable[[], list[str]] | None = None,
        secrets_key: Callable[[], bytes | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.raft = raft
        self.store = store
        self.identify = identify  # node id from the peer certificate (None = refuse)
        self.settings = settings or DispatcherSettings()
        self.settings.validate()
        self.manager_addrs = manager_addrs or (lambda: [])
        self.secrets_key = secrets_key or (lambda: None)
        self.clock = clock
        self.sessions: dict[str, _Session] = {}
        self.last_seen: dict[str, float] = {}
        self.leader_since: float | None = None
        self._status_q: dict[str, tuple[str, StatusUpdate]] = {}
        self._status_event = asyncio.Event()
        self._attaching: set[asyncio.Task[None]] = set()
        self._log_subs: dict[str, asyncio.Queue[LogLines | LogEnd]] = {}
        self._exec_subs: dict[str, tuple[str, Callable[[Frame | None], None]]] = {}
        self.stats = DispatcherStats()

    def attach(self, app: web.Application) -> None:
        app.router.add_get(SESSION_PATH, self.handle)
        app.router.add_get(STATS_PATH, self.handle_stats)

    async def handle_stats(self, request: web.Request) -> web.Response:
        """What the dispatcher has sent (managers only, as every route but the session)."""
        st = self.stats
        return web.json_response({"sessions": len(self.sessions), "full_sets": self.settings.full_sets,
                                  "frames": st.frames, "bytes": st.bytes,
                                  "assignment_cpu_s": round(st.assignment_cpu, 6)})

    async def lead(self) -> None:
        """The leader's half (a `manager.leadership.Leader`): liveness checks,
        assignment pushes and status writes, together until cancelled. If
        one fails, all three end and the sessions are closed: agents
        register again and get full assignment sets, so nothing the failed
        loop missed stays missed when the supervisor restarts this."""
        why = "dispatcher restarting"
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._run(), name="dispatcher-liveness")
                tg.create_task(self._assignments(), name="dispatcher-assignments")
                tg.create_task(self._statuses(), name="dispatcher-statuses")
        except asyncio.CancelledError:
            why = "no longer the leader"
            raise
        finally:
            # A new term judges liveness afresh, from its own start.
            self.leader_since = None
            self.last_seen.clear()
            await self._close_all(why)

    async def stop(self) -> None:
        """Close the sessions (the leadership supervisor has already ended
        `lead()`; a follower only redirects)."""
        await self._close_all("manager stopping")

    # -- assignments ---------------------------------------------------------

    def _open_secret(self, s: Secret) -> Secret | None:
        """A stored (sealed) secret as its node gets it: plaintext."""
        from pki.secretbox import SecretBoxError, open_

        key = self.secrets_key()
        if key is None:
            return None
        try:
            return evolve(s, spec__data=open_(key, s.id, s.spec.data))
        except SecretBoxError as e:
            log.error("%s", e)
            return None

    def _send_full(self, sess: _Session) -> None:
        self._send(sess, sess.assignments.full(self.store.view(), self._open_secret))

    def _dispatch(self, batch: list[Event]) -> None:
        """Assignment frames for one batch of store events: to the nodes
        whose tasks changed, and to those using a changed secret or config."""
        t0 = time.thread_time()
        try:
            self._dispatch_batch(batch)
        finally:
            self.stats.assignment_cpu += time.thread_time() - t0

    def _dispatch_batch(self, batch: list[Event]) -> None:
        tasks_by_node: dict[str, set[str]] = {}
        tasks_by_net: dict[str, set[str]] = {}  # network -> tasks whose endpoint on it may have changed
        deps: set[DepKey] = set()
        for ev in batch:
            if ev.table == "tasks":
                for nid in (ev.obj.node_id, ev.old.node_id if ev.old is not None else ""):
                    if nid:
                        tasks_by_node.setdefault(nid, set()).add(ev.obj.id)
                for att in ev.obj.networks:
                    tasks_by_net.setdefault(att.network_id, set()).add(ev.obj.id)
            elif ev.table == "nodes":
                # A node's address is in its tasks' endpoint entries: when it
                # changes, every peer on their networks must hear it.
                if ev.old is not None and ev.old.status.addr != ev.obj.status.addr:
                    for t in self.store.view().find("tasks", "node_id", ev.obj.id):
                        for att in t.networks:
                            tasks_by_net.setdefault(att.network_id, set()).add(t.id)
            elif ev.table == "services":
                # Its virtual IPs, endpoint mode, name and published ports are
                # in its tasks' endpoint entries.
                if ev.old is None or endpoint_facts(ev.old) != endpoint_facts(ev.obj):
                    for t in self.store.view().find("tasks", "service_id", ev.obj.id):
                        for att in t.networks:
                            tasks_by_net.setdefault(att.network_id, set()).add(t.id)
            else:
                deps.add((ev.table, ev.obj.id))
        if self.settings.full_sets:
            for nid in tasks_by_node:
                sess = self.sessions.get(nid)
                if sess is not None:
                    self._send_full(sess)
            return
        view = self.store.view()
        for sess in list(self.sessions.values()):
            a = sess.assignments
            mine = tasks_by_node.get(sess.node_id, ())
            eps: set[str] = set()
            for net, tids in tasks_by_net.items():
                if a.on_network(net):
                    eps |= tids
            used = [d for d in deps if a.uses(d)] if deps else []
            if not mine and not eps and not used:
                continue
            frame = a.changes(view, self._open_secret, tasks=mine, deps=used, endpoints=eps)
            if frame is not None:
                self._send(sess, frame)

    def _resync_sessions(self) -> None:
        """After events may have been missed (a new watch): bring every
        session up to date."""
        t0 = time.thread_time()
        view = self.store.view()
        for sess in list(self.sessions.values()):
            if self.settings.full_sets:
                self._send_full(sess)
                continue
            frame = sess.assignments.resync(view, self._open_secret)
            if frame is not None:
                self._send(sess, frame)
        self.stats.assignment_cpu += time.thread_time() - t0

    async def _assignments(self) -> None:
        """Assignment changes to nodes whose tasks, secrets or configs changed, coalesced."""
        while True:  # runs under lead(): cancelled on step-down
            watch = self.store.watch(frozenset({"tasks", "secrets", "configs", "networks", "nodes", "services"}))
            try:
                self._resync_sessions()
                while True:
                    # next_batch() itself, not wait_for(): on 3.11 wait_for can
                    # drop a cancellation that arrives as the watch fires.
                    batch = await watch.next_batch()
                    await asyncio.sleep(self.settings.assign_coalesce)
                    batch += watch.poll()
                    self._dispatch(batch)
            except WatchError:
                pass
            finally:
                watch.close()

    # -- network attachments of plain containers ---------------------------------

    async def _attach(self, sess: _Session, req: AttachRequest) -> None:
        """A network attachment task for a node's plain container: the
        allocator gives it its addresses and it reaches the node like any
        task; the node starts the container in its namespace."""
        try:
            view = self.store.view()
            targets = []
            for ref in req.networks:
                net = view.get("networks", ref) or view.get_by_name("networks", ref)
                if net is None:
                    raise ValueError(f"network {ref!r} does not exist")
                if not net.spec.attachable:
                    raise ValueError(f"network {net.spec.name} is not attachable: create it with --attachable "
                                     "to run plain containers on it")
                targets.append(NetworkAttachmentConfig(target=net.id))
            now = time.time()
            task = Task(id=codec.new_id(), node_id=sess.node_id, attachment=req.container, created_at=now,
                        spec=TaskSpec(container=ContainerSpec(image="none"), networks=tuple(targets)),
                        status=TaskStatus(state=TaskState.NEW, timestamp=now, message="network attachment"))
            await commit(self.raft, self.store, [store_ops.Create("tasks", task)])
            self._send(sess, AttachResult(id=req.id, task_id=task.id))
        except (ValueError, RaftError, TxFailed) as e:
            self._send(sess, AttachResult(id=req.id, error=str(e)))

    # -- logs ------------------------------------------------------------------

    async def logs(self, by_node: dict[str, list[str]], *, follow: bool,
                   tail: int | None) -> AsyncIterator[LogLines | LogEnd]:
        """Yield log frames of the given tasks ({node: [task ids]}) from
        their agents, merged as they arrive; ends when every task's stream
        ended (never, with follow, until the caller stops iterating)."""
        req = secrets.token_hex(8)
        q: asyncio.Queue[LogLines | LogEnd] = asyncio.Queue()
        self._log_subs[req] = q
        open_tasks = set()
        try:
            for nid, tids in by_node.items():
                if self.send(nid, LogRequest(id=req, tasks=tuple(tids), follow=follow, tail=tail)):
                    open_tasks.update(tids)
                else:
                    for tid in tids:
                        yield LogEnd(id=req, task=tid, error=f"node {nid} is not connected")
            while open_tasks:
                m = await q.get()
                if isinstance(m, LogEnd):
                    open_tasks.discard(m.task)
                yield m
        finally:
            del self._log_subs[req]
            for nid in by_node:
                self.send(nid, LogCancel(id=req))

    # -- exec ------------------------------------------------------------------

    def exec_open(self, node_id: str, exec_id: str, deliver: Callable[[Frame | None], None]) -> None:
        """Route the exec frames node `node_id` sends for `exec_id` to
        `deliver`; `deliver(None)` when the node's session ends first."""
        self._exec_subs[exec_id] = (node_id, deliver)

    def exec_close(self, exec_id: str) -> None:
        self._exec_subs.pop(exec_id, None)

    # -- task status ---------------------------------------------------------

    def _queue_status(self, node_id: str, updates: tuple[StatusUpdate, ...]) -> None:
        for u in updates:
            self._status_q[u.id] = (node_id, u)
        self._status_event.set()

    async def _statuses(self) -> None:
        """Agents' task status reports, written in batches: forward moves only,
        and only from the node the task is assigned to."""
        while True:
            await self._status_event.wait()
            self._status_event.clear()
            await asyncio.sleep(self.settings.status_coalesce)
            pending, self._status_q = self._status_q, {}
            for _attempt in range(3):
                view = self.store.view()
                ops = []
                for tid, (nid, u) in pending.items():
                    t = view.get("tasks", tid)
                    if t is None or t.node_id != nid or u.state <= t.status.state:
                        continue
                    ops.append(store_ops.Update("tasks", evolve(t, status=TaskStatus(
                        state=u.state, timestamp=u.timestamp or time.time(),
                        message=u.message[:1024], err=u.err[:4096],
                        container_id=u.container_id or t.status.container_id,
                        exit_code=u.exit_code if u.exit_code is not None else t.status.exit_code))))
                if not ops:
                    break
                try:
                    for i in range(0, len(ops), 200):
                        await commit(self.raft, self.store, ops[i:i + 200])
                    break
                except TxFailed:
                    continue  # a task changed meanwhile: re-read and retry
                except RaftError as e:
                    log.info("task status not written: %s", e)
                    # Keep them for the next round (unless newer ones arrived).
                    for k, v in pending.items():
                        self._status_q.setdefault(k, v)
                    await asyncio.sleep(0.5)
                    self._status_event.set()
                    break
            else:
                # Raced three times in a row: try again shortly. (Agents send a
                # report once; no full set comes back to make them repeat it.)
                for k, v in pending.items():
                    self._status_q.setdefault(k, v)
                await asyncio.sleep(0.5)
                self._status_event.set()

    # -- sessions ------------------------------------------------------------

    def _leader_addr(self) -> str:
        return self.raft.members.get(self.raft.lead, "") if self.raft.lead else ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=None)
        await ws.prepare(request)
        node_id = self.identify(request)
        if node_id is None:
            await self._send_close(ws, Close(message="a node certificate is required"))
            return ws
        if not self.raft.is_leader:
            await self._send_close(ws, Redirect(leader=self._leader_addr()))
            return ws
        try:
            first = await ws.receive(timeout=30)
        except asyncio.TimeoutError:
            await ws.close()
            return ws
        try:
            reg = decode(first.data, AGENT_FRAMES) if first.type == WSMsgType.BINARY else None
        except FrameError as e:
            await self._send_close(ws, Close(message=str(e)))
            return ws
        if not isinstance(reg, Register):
            await self._send_close(ws, Close(message="expected a register frame first"))
            return ws
        node = self.store.view().get("nodes", node_id)
        if node is None:
            await self._send_close(ws, Close(message=f"node {node_id} is not part of this cluster"))
            return ws
        peer = request.transport.get_extra_info("peername") if request.transport else None
        addr = reg.addr or (str(peer[0]) if peer else "")
        # Heard from now: a liveness check running while the registration is
        # being committed must not mark the node DOWN right after it (nothing
        # would mark it READY again while this session lives).
        self.last_seen[node_id] = self.clock()
        try:
            await self._mark_ready(node, reg.description, addr)
        except (RaftError, TxFailed) as e:
            await self._send_close(ws, Close(message=f"cannot register now: {e}"))
            return ws
        if not self.raft.is_leader:
            # Stepped down while registering: lead()'s cleanup has already
            # closed the sessions and would never see this one.
            await self._send_close(ws, Redirect(leader=self._leader_addr()))
            return ws
        old = self.sessions.get(node_id)
        if old is not None:
            await old.ws.close(message=b"replaced by a newer session")
        sess = _Session(node_id, secrets.token_hex(8), ws, addr, self.clock(),
                        asyncio.Queue(self.settings.outbox_frames), request.transport)
        self.sessions[node_id] = sess
        self.last_seen[node_id] = sess.last_seen
        # The full set once per session, changes after that: queued before any
        # await, so every change frame is relative to it. The pump starts
        # after the session frame is out.
        t0 = time.thread_time()
        self._send_full(sess)
        self.stats.assignment_cpu += time.thread_time() - t0
        await ws.send_bytes(encode(SessionStarted(
            session_id=sess.session_id, node_id=node_id, period=self.settings.period,
            managers=tuple(self.manager_addrs()))))
        sender = asyncio.create_task(self._pump(sess))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    break
                m = self._decode(msg, node_id)
                if m is None:
                    await ws.close(message=b"invalid frame (the manager's log says which)")
                    break
                sess.last_seen = self.last_seen[node_id] = self.clock()
                if isinstance(m, Heartbeat):
                    # The ack carries what the cluster wants of the node (its role),
                    # so a promotion or demotion reaches it within a period.
                    cur = self.store.view().get("nodes", node_id)
                    self._send(sess, HeartbeatAck(period=self.settings.period,
                                                  role=cur.spec.role if cur is not None else None))
                elif isinstance(m, StatusBatch):
                    self._queue_status(node_id, m.updates)
                elif isinstance(m, (LogLines, LogEnd)):
                    q = self._log_subs.get(m.id)
                    if q is not None:
                        q.put_nowait(m)
                elif isinstance(m, EXEC_AGENT_FRAMES):
                    sub = self._exec_subs.get(m.id)  # type: ignore[attr-defined]
                    if sub is not None and sub[0] == node_id:
                        sub[1](m)
                elif isinstance(m, AttachRequest):
                    # Answered from its own task: a commit must not hold up heartbeats.
                    t = asyncio.create_task(self._attach(sess, m))
                    self._attaching.add(t)
                    t.add_done_callback(self._attaching.discard)
                else:
                    log.warning("node %s sent a %r frame mid-session; ignored", node_id, m.KIND)
        finally:
            sender.cancel()
            if self.sessions.get(node_id) is sess:
                del self.sessions[node_id]
                # The agent kills the processes of a session that ended.
                for xid, (nid, deliver) in list(self._exec_subs.items()):
                    if nid == node_id:
                        del self._exec_subs[xid]
                        deliver(None)
        return ws

    async def _pump(self, sess: _Session) -> None:
        st = self.stats
        while True:
            m = await sess.outbox.get()
            t0 = time.thread_time()
            data = encode(m)
            if isinstance(m, (AssignmentsFull, AssignmentChanges)):
                st.assignment_cpu += time.thread_time() - t0
            st.frames[m.KIND] = st.frames.get(m.KIND, 0) + 1
            st.bytes[m.KIND] = st.bytes.get(m.KIND, 0) + len(data)
            await sess.ws.send_bytes(data)

    def send(self, node_id: str, frame: Frame) -> bool:
        """Queue a frame for a node's session; False if it has none (or
        was too slow and is being closed)."""
        sess = self.sessions.get(node_id)
        return self._send(sess, frame) if sess is not None else False

    @staticmethod
    def _send(sess: _Session, frame: Frame) -> bool:
        try:
            sess.outbox.put_nowait(frame)
        except asyncio.QueueFull:
            asyncio.ensure_future(sess.ws.close(message=b"agent too slow"))
            return False
        return True

    @staticmethod
    def _decode(msg: Any, node_id: str) -> Frame | None:
        if msg.type != WSMsgType.BINARY:
            return None
        try:
            return decode(msg.data, AGENT_FRAMES)
        except FrameError as e:
            log.warning("node %s: %s; closing its session", node_id, e)
            return None

    @staticmethod
    async def _send_close(ws: web.WebSocketResponse, frame: Redirect | Close) -> None:
        try:
            await ws.send_bytes(encode(frame))
        finally:
            await ws.close()

    async def _close_all(self, why: str) -> None:
        """Close every session at once. A peer that has not answered its
        close within CLOSE_WAIT seconds has its connection dropped: one by
        one, each waiting for its peer, a thousand sessions of busy agents
        held a step-down (and the next term, which waits for it) for minutes."""
        sessions = list(self.sessions.values())
        self.sessions.clear()
        if not sessions:
            return
        msg = why.encode()
        closes = [asyncio.ensure_future(s.ws.close(message=msg)) for s in sessions]
        try:
            await asyncio.wait(closes, timeout=CLOSE_WAIT)
        finally:
            for s, c in zip(sessions, closes):
                if not c.done():
                    c.cancel()
                    if s.transport is not None:
                        s.transport.abort()  # the session's handler then ends too

    async def _mark_ready(self, node: Node, description: NodeDescription | None, addr: str) -> None:
        # No description (the agent could not describe itself): keep the one we have.
        desc = description if description is not None else node.description
        for _ in range(3):
            new = evolve(node, description=desc, status__state=NodeState.READY, status__message="",
                         status__addr=addr)
            try:
                await commit(self.raft, self.store, [store_ops.Update("nodes", new)])
                return
            except TxFailed:
                node = self.store.view().get("nodes", node.id) or node  # raced with another write; retry
        raise TxFailed(RuntimeError(f"node {node.id}: too many concurrent updates"))

    # -- liveness ------------------------------------------------------------

    async def _run(self) -> None:
        interval = self.settings.check_interval or self.settings.period / 2
        while True:
            await asyncio.sleep(interval)
            try:
                if self.leader_since is None:
                    self.leader_since = self.clock()
                await self._check()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a bad tick stop liveness checking
                log.exception("dispatcher check failed")

    async def _check(self) -> None:
        now = self.clock()
        limit = self.settings.period * self.settings.down_after
        assert self.leader_since is not None
        ops = []
        for node in self.store.view().list("nodes"):
            if node.status.state == NodeState.DOWN:
                continue
            seen = max(self.last_seen.get(node.id, 0.0), self.leader_since)
            if now - seen > limit:
                ops.append(store_ops.Update("nodes", evolve(
                    node, status__state=NodeState.DOWN, status__message="heartbeat failure")))
        for s in list(self.sessions.values()):
            if now - s.last_seen > limit:
                await s.ws.close(message=b"heartbeat timeout")
        if ops:
            try:
                await commit(self.raft, self.store, ops)
            except TxFailed:
                pass  # a node changed meanwhile; the next check sees it again
            except RaftError as e:
                log.warning("could not mark nodes down: %s", e)
