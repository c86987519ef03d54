"""The cluster event log behind `orch events`.

`derive()` turns one store change (a watch event) into event records: pure,
so every manager, fed the same Raft log, derives the same records with the
same ids ("INDEX.SEQ", see `api.events`). `EventLog` keeps the newest
`capacity` records in a ring, follows the store's watch (a task drains it;
readers drain it synchronously first, so they see everything applied so
far), takes leader changes from the Raft driver's term starts (each term's
first entry, at the same index on every replica), and wakes streaming
readers. A reader asking for history older than the ring gets `EventsGone`
(HTTP 410): it cannot be served without a gap.

A snapshot restore leaves a gap (the entries it covers were never applied
here): the ring starts over at the snapshot's index, and the differences the
restore produces are not events (another manager derived the real ones).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from api.events import (
    EXEC_SEQ_BASE,
    MAX_SEQ,
    EventRecord,
    EventScope,
    EventType,
    event_id,
)
from api.objects import NodeState
from manager.store import MemoryStore
from manager.store.errors import WatchCompacted, WatchError
from manager.store.watch import Event, EventAction, Watch

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000

_TYPES: dict[str, EventType] = {
    "services": EventType.SERVICE,
    "tasks": EventType.TASK,
    "nodes": EventType.NODE,
    "networks": EventType.NETWORK,
    "secrets": EventType.SECRET,
    "configs": EventType.CONFIG,
    "stacks": EventType.STACK,
    "clusters": EventType.CLUSTER,
}
_ACTION = {EventAction.CREATE: "create", EventAction.UPDATE: "update", EventAction.DELETE: "remove"}


class EventsGone(Exception):
    """The requested history is no longer kept (HTTP 410)."""


Actor = tuple[str, str]
"""(id, name)"""
Draft = tuple[EventType, str, Actor, dict[str, str]]
"""An event before it has an id and a time: (type, action, actor, attributes)."""


class Names:
    """Names of services and nodes by id, as of the changes derived so far:
    task events name their service and node with them."""

    def __init__(self) -> None:
        self.services: dict[str, str] = {}
        self.nodes: dict[str, str] = {}

    def seed(self, store: MemoryStore) -> None:
        v = store.view()
        self.services = {s.id: s.spec.name for s in v.list("services")}
        self.nodes = {n.id: node_name(n) for n in v.list("nodes")}

    def node(self, nid: str) -> str:
        return self.nodes.get(nid, nid)


def node_name(n: Any) -> str:
    return n.spec.name or n.description.hostname or n.id


def _task_attrs(t: Any, names: Names) -> dict[str, str]:
    a = {"service.id": t.service_id, "service": names.services.get(t.service_id, t.service_id),
         "slot": str(t.slot), "state": t.status.state.label, "desired_state": t.desired_state.label}
    if t.node_id:
        a["node.id"] = t.node_id
        a["node"] = names.node(t.node_id)
    if t.attachment:
        a["attachment"] = t.attachment
    return a


def _task_name(t: Any, names: Names) -> str:
    svc = names.services.get(t.service_id, t.service_id)
    if t.attachment:
        return f"{t.attachment}.{t.id[:12]}"
    return f"{svc}.{t.slot or t.node_id[:12]}.{t.id[:12]}"


def derive(ev: Event, names: Names) -> list[Draft]:
    """The events one store change makes (often none: most task and node
    writes change nothing a user follows). Updates `names` as it goes."""
    typ = _TYPES.get(ev.table)
    if typ is None:
        return []
    obj, old = ev.obj, ev.old
    action = _ACTION[ev.action]
    if typ is EventType.TASK:
        actor = (obj.id, _task_name(obj, names))
        attrs = _task_attrs(obj, names)
        if ev.action is EventAction.UPDATE:
            assert old is not None
            if old.status.state != obj.status.state:
                attrs["from"] = old.status.state.label
                st = obj.status
                if st.message:
                    attrs["message"] = st.message
                if st.err:
                    attrs["error"] = st.err
                if st.exit_code is not None:
                    attrs["exit_code"] = str(st.exit_code)
                return [(typ, "state", actor, attrs)]
            if old.desired_state != obj.desired_state:
                attrs["from_desired_state"] = old.desired_state.label
                return [(typ, "update", actor, attrs)]
            return []
        return [(typ, action, actor, attrs)]
    if typ is EventType.NODE:
        name = node_name(obj)
        if ev.action is EventAction.DELETE:
            names.nodes.pop(obj.id, None)
        else:
            names.nodes[obj.id] = name
        actor = (obj.id, name)
        attrs = {"role": obj.role.value, "availability": obj.spec.availability.value,
                 "state": obj.status.state.value}
        if obj.status.addr:
            attrs["addr"] = obj.status.addr
        if ev.action is EventAction.UPDATE:
            assert old is not None
            was, now = old.status.state, obj.status.state
            if was != now:
                attrs["from"] = was.value
                if obj.status.message:
                    attrs["message"] = obj.status.message
                if now is NodeState.READY:
                    return [(typ, "up", actor, attrs)]
                if was is NodeState.READY:
                    return [(typ, "down", actor, attrs)]
                return [(typ, "update", actor, attrs)]
            if old.spec == obj.spec and old.role == obj.role and old.manager_status == obj.manager_status:
                return []
        return [(typ, action, actor, attrs)]
    name = obj.spec.name
    actor = (obj.id, name)
    attrs: dict[str, str] = {}
    if typ is EventType.SERVICE:
        if ev.action is EventAction.DELETE:
            names.services.pop(obj.id, None)
        else:
            names.services[obj.id] = name
        if ev.action is EventAction.UPDATE:
            assert old is not None
            us, ous = obj.update_status, old.update_status
            if us is not None and (ous is None or ous.state != us.state):
                attrs["update_state"] = us.state.value
                if us.message:
                    attrs["message"] = us.message
            elif old.spec == obj.spec:
                return []
        if ev.action is not EventAction.DELETE:
            attrs["mode"] = str(obj.spec.mode.value)
    elif ev.action is EventAction.UPDATE:
        assert old is not None
        if old.spec == obj.spec:
            return []
    return [(typ, action, actor, attrs)]


class _Waiters:
    """Futures woken when records are appended."""

    def __init__(self) -> None:
        self._futs: list[asyncio.Future[None]] = []

    async def wait(self, timeout: float | None) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futs.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in self._futs:
                self._futs.remove(fut)

    def wake(self) -> None:
        futs, self._futs = self._futs, []
        for f in futs:
            if not f.done():
                f.set_result(None)


class EventLog:
    """The newest `capacity` events of the cluster, derived from the store."""

    def __init__(self, store: MemoryStore, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"event log capacity must be >= 1, got {capacity}")
        import time

        self.store = store
        self.capacity = capacity
        self._clock = clock or time.time
        self._ring: deque[EventRecord] = deque()
        # Every event after this cursor is in the ring (a request for events
        # after an older cursor cannot be served without a gap).
        self._floor: tuple[int, int] = (store.index, MAX_SEQ)
        self.last: tuple[int, int] = self._floor
        self._restored = store.restored_index
        self._exec_seq = EXEC_SEQ_BASE
        self.names = Names()
        self.names.seed(store)
        self._waiters = _Waiters()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self._watch: Watch | None = store.watch(from_version=store.index)

    # -- producing ---------------------------------------------------------------

    def sync(self) -> None:
        """Take every store change applied so far (no await)."""
        w = self._watch
        if w is None:
            return
        try:
            batch = w.poll()
        except WatchError as e:
            self._rewatch(e)
            return
        if batch or self.store.restored_index != self._restored:
            self._ingest(batch)

    def _rewatch(self, err: WatchError) -> None:
        if self._watch is None or self.closed:
            return
        # Our watch overflowed (the loop stalled): resume from where the ring
        # ends if the store still has that, else start over with a gap.
        log.warning("event log: %s", err)
        try:
            self._watch = self.store.watch(from_version=self.last[0])
        except WatchCompacted:
            self._watch = self.store.watch(from_version=self.store.index)
            self._reset(self.store.index)
            return
        self.sync()

    def _reset(self, index: int) -> None:
        self._ring.clear()
        self._floor = self.last = (index, MAX_SEQ)
        self.names.seed(self.store)

    def _ingest(self, batch: list[Event]) -> None:
        restored = self.store.restored_index
        if restored != self._restored:
            # Everything up to the restore's index is a gap; its difference
            # events (at that index) and anything older are dropped.
            self._restored = restored
            self._reset(restored)
        drafts: list[tuple[int, float, Draft]] = []
        for ev in batch:
            if ev.version <= self.last[0]:
                continue
            try:
                made = derive(ev, self.names)
            except Exception:  # a bug here must not stop the log (nor the apply loop)
                log.exception("event log: no event for %s %s at %d", ev.action, ev.table, ev.version)
                continue
            for d in made:
                drafts.append((ev.version, float(ev.ts), d))
        for index, ts, d in drafts:
            self._append(index, ts, d)
        if batch:
            self.last = max(self.last, (batch[-1].version, -1))
        if drafts:
            self._waiters.wake()

    def _append(self, index: int, ts: float, d: Draft, seq: int | None = None,
                scope: EventScope = EventScope.CLUSTER) -> EventRecord:
        typ, action, actor, attrs = d
        if seq is None:
            seq = self.last[1] + 1 if self.last[0] == index and self.last[1] < EXEC_SEQ_BASE else 0
        rec = EventRecord(index, seq, ts, typ, action, actor[0], actor[1], attrs, scope)
        self._ring.append(rec)
        if scope is EventScope.CLUSTER:
            self.last = (index, seq)
        while len(self._ring) > self.capacity:
            self._floor = self._ring.popleft().cursor
        return rec

    def term_started(self, index: int, term: int, leader: int) -> None:
        """Raft listener: term `term` began at `index` with `leader` (Raft id,
        0 if unknown here)."""
        self.sync()
        if index <= self.last[0]:
            return
        attrs = {"term": str(term), "raft_id": str(leader)}
        actor = ("", "")
        for n in self.store.view().list("nodes"):
            ms = n.manager_status
            if leader and ms is not None and ms.raft_id == leader:
                actor = (n.id, node_name(n))
                if ms.addr:
                    attrs["addr"] = ms.addr
        # The term's first entry carries no time: this replica's clock when
        # it applied it (the id, not the time, is what replicas agree on).
        self._append(index, self._clock(), (EventType.CLUSTER, "leader", actor, attrs))
        self._waiters.wake()

    def record_exec(self, service: str, task: str, node: str, argv: list[str] | tuple[str, ...],
                    user: str = "") -> EventRecord:
        """Record an exec this manager served (a local event: other managers
        do not have it). `service`/`task`/`node` are ids or names."""
        self.sync()
        index = max(self.store.index, self.last[0])
        self._exec_seq += 1
        attrs = {"service": self.names.services.get(service, service), "node": self.names.node(node),
                 "argv": " ".join(argv), "user": user}
        if service in self.names.services:
            attrs["service.id"] = service
        if node in self.names.nodes:
            attrs["node.id"] = node
        t = self.store.view().get("tasks", task)
        tname = _task_name(t, self.names) if t is not None else task
        rec = self._append(index, self._clock(), (EventType.TASK, "exec", (task, tname), attrs),
                           seq=self._exec_seq, scope=EventScope.LOCAL)
        self._waiters.wake()
        return rec

    # -- reading -------------------------------------------------------------------

    def after(self, cursor: tuple[int, int]) -> list[EventRecord]:
        """Every kept event after `cursor`; `EventsGone` if some are no longer kept."""
        self.sync()
        if cursor < self._floor:
            raise EventsGone(
                f"events after {event_id(*cursor) if cursor[1] != MAX_SEQ else cursor[0]} are no "
                f"longer all kept here: this manager keeps events after "
                f"{self._floor[0] if self._floor[1] == MAX_SEQ else event_id(*self._floor)} "
                f"(at most the newest {self.capacity}, and none from before a snapshot it installed); "
                "resume from a newer id, or without --since"
            )
        # The ring is in cursor order and followers ask for its last few.
        out: list[EventRecord] = []
        for r in reversed(self._ring):
            if r.cursor <= cursor:
                break
            out.append(r)
        out.reverse()
        return out

    def since_time(self, t: float) -> list[EventRecord]:
        """Every kept event at or after unix time `t` (times are the leaders' clocks)."""
        self.sync()
        return [r for r in self._ring if r.time >= t]

    @property
    def newest(self) -> tuple[int, int]:
        """The cursor after the newest event (the start of a live follow)."""
        self.sync()
        return max(self.last, self._ring[-1].cursor) if self._ring else self.last

    async def wait(self, timeout: float | None = None) -> None:
        """Until events are appended (or `timeout` seconds pass)."""
        await self._waiters.wait(timeout)

    @property
    def floor(self) -> tuple[int, int]:
        """Every event after this cursor is kept."""
        self.sync()
        return self._floor

    @property
    def size(self) -> int:
        self.sync()
        return len(self._ring)

    # -- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-log")

    async def _run(self) -> None:
        while True:
            w = self._watch
            if w is None:
                return
            try:
                batch = await w.next_batch()
            except WatchError as e:
                self._rewatch(e)
                continue
            self._ingest(batch)

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self.closed = True
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._waiters.wake()
