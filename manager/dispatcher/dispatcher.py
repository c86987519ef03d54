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

Frames, agent -> manager: {"t": "register", "description": {...}},
{"t": "hb"}, {"t": "status", "updates": [...]}; manager -> agent:
{"t": "session", "session_id", "node_id", "period", "managers"},
{"t": "hb", "period"}, {"t": "redirect", "leader"}, {"t": "error", "message"}.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiohttp import WSMsgType, web

from api.objects import Node, NodeDescription, NodeState, evolve
from manager import store as store_ops
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.tx import TxFailed, commit

log = logging.getLogger(__name__)

SESSION_PATH = "/v1/dispatcher/session"
MAX_FRAME = 4 << 20


@dataclass
class DispatcherSettings:
    period: float = 5.0  # heartbeat period told to agents
    down_after: float = 3.0  # periods without a heartbeat before DOWN
    check_interval: float | None = None  # default: period / 2


@dataclass
class _Session:
    node_id: str
    session_id: str
    ws: web.WebSocketResponse
    addr: str
    last_seen: float
    outbox: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(1024))


class Dispatcher:
    def __init__(
        self,
        raft: RaftNode,
        store: MemoryStore,
        identify: Callable[[web.Request], str | None],
        settings: DispatcherSettings | None = None,
        *,
        manager_addrs: Callable[[], list[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.raft = raft
        self.store = store
        self.identify = identify  # node id from the peer certificate (None = refuse)
        self.settings = settings or DispatcherSettings()
        self.manager_addrs = manager_addrs or (lambda: [])
        self.clock = clock
        self.sessions: dict[str, _Session] = {}
        self.last_seen: dict[str, float] = {}
        self.leader_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        # Hooks for the orchestration layer (assignments, task status).
        self.on_status: Callable[[str, list[dict[str, Any]]], None] | None = None
        self.on_session: Callable[[str], None] | None = None

    def attach(self, app: web.Application) -> None:
        app.router.add_get(SESSION_PATH, self.handle)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_all("manager stopping")

    # -- sessions ------------------------------------------------------------

    def _leader_addr(self) -> str:
        return self.raft.members.get(self.raft.lead, "") if self.raft.lead else ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=None)
        await ws.prepare(request)
        node_id = self.identify(request)
        if node_id is None:
            await self._send_close(ws, {"t": "error", "message": "a node certificate is required"})
            return ws
        if not self.raft.is_leader:
            await self._send_close(ws, {"t": "redirect", "leader": self._leader_addr()})
            return ws
        try:
            first = await ws.receive(timeout=30)
        except asyncio.TimeoutError:
            await ws.close()
            return ws
        msg = self._decode(first)
        if msg is None or msg.get("t") != "register":
            await self._send_close(ws, {"t": "error", "message": "expected a register frame first"})
            return ws
        node = self.store.view().get("nodes", node_id)
        if node is None:
            await self._send_close(ws, {"t": "error", "message": f"node {node_id} is not part of this cluster"})
            return ws
        peer = request.transport.get_extra_info("peername") if request.transport else None
        addr = str(msg.get("addr") or (peer[0] if peer else ""))
        try:
            await self._mark_ready(node, msg.get("description"), addr)
        except (RaftError, TxFailed) as e:
            await self._send_close(ws, {"t": "error", "message": f"cannot register now: {e}"})
            return ws
        old = self.sessions.get(node_id)
        if old is not None:
            await old.ws.close(message=b"replaced by a newer session")
        sess = _Session(node_id, secrets.token_hex(8), ws, addr, self.clock())
        self.sessions[node_id] = sess
        self.last_seen[node_id] = sess.last_seen
        await ws.send_bytes(msgpack.packb({
            "t": "session", "session_id": sess.session_id, "node_id": node_id,
            "period": self.settings.period, "managers": self.manager_addrs(),
        }))
        if self.on_session is not None:
            self.on_session(node_id)
        sender = asyncio.create_task(self._pump(sess))
        try:
            async for frame in ws:
                if frame.type != WSMsgType.BINARY:
                    break
                m = self._decode(frame)
                if m is None:
                    break
                sess.last_seen = self.last_seen[node_id] = self.clock()
                t = m.get("t")
                if t == "hb":
                    # The ack carries what the cluster wants of the node (its role),
                    # so a promotion or demotion reaches it within a period.
                    cur = self.store.view().get("nodes", node_id)
                    sess.outbox.put_nowait({"t": "hb", "period": self.settings.period,
                                            "role": cur.spec.role.value if cur is not None else ""})
                elif t == "status" and self.on_status is not None:
                    self.on_status(node_id, list(m.get("updates") or []))
        finally:
            sender.cancel()
            if self.sessions.get(node_id) is sess:
                del self.sessions[node_id]
        return ws

    async def _pump(self, sess: _Session) -> None:
        while True:
            m = await sess.outbox.get()
            await sess.ws.send_bytes(msgpack.packb(m, use_bin_type=True))

    def send(self, node_id: str, message: dict[str, Any]) -> bool:
        sess = self.sessions.get(node_id)
        if sess is None:
            return False
        try:
            sess.outbox.put_nowait(message)
        except asyncio.QueueFull:
            asyncio.ensure_future(sess.ws.close(message=b"agent too slow"))
            return False
        return True

    @staticmethod
    def _decode(frame: Any) -> dict[str, Any] | None:
        if frame.type != WSMsgType.BINARY:
            return None
        try:
            m = msgpack.unpackb(frame.data, raw=False)
        except Exception:  # hostile bytes: several exception types
            return None
        return m if isinstance(m, dict) else None

    @staticmethod
    async def _send_close(ws: web.WebSocketResponse, m: dict[str, Any]) -> None:
        try:
            await ws.send_bytes(msgpack.packb(m))
        finally:
            await ws.close()

    async def _close_all(self, why: str) -> None:
        for s in list(self.sessions.values()):
            await s.ws.close(message=why.encode())
        self.sessions.clear()

    async def _mark_ready(self, node: Node, description: Any, addr: str) -> None:
        desc = node.description
        if isinstance(description, dict):
            try:
                desc = NodeDescription.model_validate(description)
            except ValueError:
                pass  # keep what we had; a bad description must not stop a node from registering
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
                if not self.raft.is_leader:
                    if self.leader_since is not None:
                        self.leader_since = None
                        self.last_seen.clear()
                        await self._close_all("no longer the leader")
                    continue
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
