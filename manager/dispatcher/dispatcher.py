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

from api import codec
from api.objects import Node, NodeDescription, NodeState, TaskState, TaskStatus, evolve
from manager import store as store_ops
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.store.errors import WatchError
from manager.tx import TxFailed, commit

log = logging.getLogger(__name__)

SESSION_PATH = "/v1/dispatcher/session"
MAX_FRAME = 4 << 20


@dataclass
class DispatcherSettings:
    period: float = 5.0  # heartbeat period told to agents
    down_after: float = 3.0  # periods without a heartbeat before DOWN
    check_interval: float | None = None  # default: period / 2
    assign_coalesce: float = 0.02  # wait this long to batch assignment changes
    status_coalesce: float = 0.05  # and status reports


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
        secrets_key: Callable[[], bytes | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.raft = raft
        self.store = store
        self.identify = identify  # node id from the peer certificate (None = refuse)
        self.settings = settings or DispatcherSettings()
        self.manager_addrs = manager_addrs or (lambda: [])
        self.secrets_key = secrets_key or (lambda: None)
        self.clock = clock
        self.sessions: dict[str, _Session] = {}
        self.last_seen: dict[str, float] = {}
        self.leader_since: float | None = None
        self._status_q: dict[str, tuple[str, dict[str, Any]]] = {}
        self._status_event = asyncio.Event()
        self._log_subs: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    def attach(self, app: web.Application) -> None:
        app.router.add_get(SESSION_PATH, self.handle)

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

    def assignment_set(self, node_id: str) -> list[dict[str, Any]]:
        """The tasks a node must know: those it should run, and those it
        still runs but should stop."""
        view = self.store.view()
        services = {}
        out = []
        for t in view.find("tasks", "node_id", node_id):
            if t.desired_state > TaskState.RUNNING and t.status.state.terminal:
                continue
            if t.status.state < TaskState.ASSIGNED:
                continue
            svc = services.get(t.service_id)
            if svc is None:
                svc = services[t.service_id] = view.get("services", t.service_id)
            item = {
                "id": t.id, "service_id": t.service_id, "service_name": svc.spec.name if svc else "",
                "slot": t.slot, "spec_version": t.spec_version, "spec": codec.to_dict(t.spec),
                "desired_state": int(t.desired_state), "state": int(t.status.state),
            }
            if t.desired_state <= TaskState.RUNNING:
                # Secrets and configs travel only with the tasks that use them,
                # to the node that runs them.
                item["files"] = self._files(view, t)
            out.append(item)
        return out

    def _files(self, view: Any, t: Any) -> list[dict[str, Any]]:
        from pki.secretbox import SecretBoxError, open_

        files = []
        c = t.spec.container
        key = self.secrets_key()
        for r in c.secrets:
            s = view.get("secrets", r.secret_id)
            if s is None or key is None:
                continue
            try:
                data = open_(key, s.id, s.spec.data)
            except SecretBoxError as e:
                log.error("%s", e)
                continue
            files.append({"kind": "secret", "target": r.target or f"/run/secrets/{r.secret_name}", "data": data,
                          "uid": r.uid, "gid": r.gid, "mode": r.mode})
        for r in c.configs:
            cfg = view.get("configs", r.config_id)
            if cfg is None:
                continue
            files.append({"kind": "config", "target": r.target or f"/{r.config_name}", "data": cfg.spec.data,
                          "uid": r.uid, "gid": r.gid, "mode": r.mode})
        return files

    def _push(self, node_id: str) -> None:
        if node_id in self.sessions:
            self.send(node_id, {"t": "assign", "full": True, "tasks": self.assignment_set(node_id)})

    async def _assignments(self) -> None:
        """Full assignment sets to nodes whose tasks changed, coalesced."""
        while True:
            if not self.raft.is_leader:
                await asyncio.sleep(0.1)
                continue
            watch = self.store.watch(frozenset({"tasks"}))
            try:
                while self.raft.is_leader:
                    try:
                        batch = await asyncio.wait_for(watch.next_batch(), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    await asyncio.sleep(self.settings.assign_coalesce)
                    batch += watch.poll()
                    dirty = set()
                    for ev in batch:
                        if ev.table != "tasks":
                            continue
                        dirty.add(ev.obj.node_id)
                        if ev.old is not None:
                            dirty.add(ev.old.node_id)
                    for nid in dirty:
                        if nid:
                            self._push(nid)
            except WatchError:
                pass
            finally:
                watch.close()

    # -- logs ------------------------------------------------------------------

    async def logs(self, by_node: dict[str, list[str]], *, follow: bool, tail: int | None) -> Any:
        """Yield log frames of the given tasks ({node: [task ids]}) from
        their agents, merged as they arrive; ends when every task's stream
        ended (never, with follow, until the caller stops iterating)."""
        req = secrets.token_hex(8)
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._log_subs[req] = q
        open_tasks = set()
        try:
            for nid, tids in by_node.items():
                if self.send(nid, {"t": "logs", "id": req, "tasks": tids, "follow": follow, "tail": tail}):
                    open_tasks.update(tids)
                else:
                    for tid in tids:
                        yield {"t": "log_end", "task": tid, "error": f"node {nid} is not connected"}
            while open_tasks:
                m = await q.get()
                if m.get("t") == "log_end":
                    open_tasks.discard(m.get("task"))
                yield m
        finally:
            del self._log_subs[req]
            for nid in by_node:
                self.send(nid, {"t": "logs_cancel", "id": req})

    # -- task status ---------------------------------------------------------

    def _queue_status(self, node_id: str, updates: list[dict[str, Any]]) -> None:
        for u in updates:
            if isinstance(u, dict) and isinstance(u.get("id"), str):
                self._status_q[u["id"]] = (node_id, u)
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
                    if t is None or t.node_id != nid:
                        continue
                    try:
                        state = TaskState(int(u.get("state")))
                    except (TypeError, ValueError):
                        continue
                    if state <= t.status.state:
                        continue
                    code = u.get("exit_code")
                    ops.append(store_ops.Update("tasks", evolve(t, status=TaskStatus(
                        state=state, timestamp=float(u.get("timestamp") or time.time()),
                        message=str(u.get("message") or "")[:1024], err=str(u.get("err") or "")[:4096],
                        container_id=str(u.get("container_id") or t.status.container_id),
                        exit_code=code if isinstance(code, int) else t.status.exit_code))))
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
        self._push(node_id)  # the full set on every new session
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
                elif t == "status":
                    self._queue_status(node_id, list(m.get("updates") or []))
                elif t in ("log", "log_end"):
                    q = self._log_subs.get(str(m.get("id")))
                    if q is not None:
                        q.put_nowait(m)
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
