"""Watches: change events of the store, delivered to asyncio consumers.

`apply()` is synchronous and must never wait for a consumer, so every
watcher has a bounded queue: events are appended (whole transactions at a
time) and a waiting consumer is woken; a watcher whose queue would pass its
limit is closed with `WatchOverflow` and has to list again.

A bounded history ring of recent transactions lets a new watcher start from
a version it already knows (`from_version`): it first receives every event
with a greater version. Asking for a version older than the ring raises
`WatchCompacted`.

The only asyncio here is the consumer side (a future to wait on); the
producer side is plain calls, so the store stays usable without a loop.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .errors import WatchClosed, WatchCompacted, WatchError, WatchOverflow

DEFAULT_HISTORY_EVENTS = 10_000
DEFAULT_QUEUE_LIMIT = 50_000


class EventAction(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """One change. `version` is the Raft index of the transaction (all events
    of one transaction share it). `obj` is the object after the change (for a
    delete: the object as it was); `old` the object before it (None for a
    create). `ts` is the transaction's time (unix seconds, chosen by the
    leader that proposed it, so the same on every replica; 0.0 for the
    differences a snapshot restore produces)."""

    version: int
    action: EventAction
    table: str
    obj: Any
    old: Any | None = None
    ts: float = 0.0


EventFilter = Callable[[Event], bool]


class Watch:
    """A stream of events: `async for ev in watch`, or `await next_batch()`
    for all queued events of one or more whole transactions. `close()` (or
    leaving a `with` block) ends it."""

    def __init__(
        self,
        hub: WatchHub,
        tables: frozenset[str] | None,
        filter: EventFilter | None,
        limit: int,
        seen: int,
    ) -> None:
        self._hub = hub
        self._tables = tables
        self._filter = filter
        self._limit = limit
        self._queue: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: WatchError | None = None
        # The highest version this watcher has been offered: it has seen (or
        # will see) the state up to here, so nothing at or below it repeats.
        self.seen = seen

    # -- consumer side ---------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events queued and not yet consumed."""
        return len(self._queue)

    def poll(self, max_events: int | None = None) -> list[Event]:
        """The queued events without waiting (whole transactions; at least one
        transaction even if it is larger than `max_events`). Raises the
        watch's error once it has failed, `WatchClosed` once closed."""
        if self.error is not None:
            raise self.error
        if not self._queue:
            if self.closed:
                raise WatchClosed("watch is closed")
            return []
        q = self._queue
        if max_events is None or max_events >= len(q):
            out = list(q)
            q.clear()
            return out
        out = []
        while q and (len(out) < max_events or q[0].version == out[-1].version):
            out.append(q.popleft())
        return out

    async def next_batch(self, max_events: int | None = None) -> list[Event]:
        """Wait for events, then return them as `poll()` does (never empty)."""
        while True:
            batch = self.poll(max_events)
            if batch:
                return batch
            await self._wait()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.error is not None:
                raise self.error
            if self.closed:
                raise StopAsyncIteration
            await self._wait()

    async def _wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = fut
        try:
            await fut
        finally:
            self._waiter = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._hub._remove(self)
        self._wake()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- producer side (called by the store) --------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, err: WatchError) -> None:
        if self.closed:
            return
        self.error = err
        self.close()

    def _select(self, events: Iterable[Event]) -> list[Event]:
        tables, flt = self._tables, self._filter
        out = [e for e in events if tables is None or e.table in tables]
        if flt is not None and out:
            out = [e for e in out if flt(e)]
        return out

    def _offer(self, version: int, events: Iterable[Event], *, restore: bool = False) -> None:
        if self.closed:
            return
        if restore:
            seen = self.seen
            # A restored object at or below what this watcher already saw is
            # not news; a delete always is (its object is gone now).
            events = [
                e
                for e in events
                if e.action is EventAction.DELETE or e.obj.meta.version > seen
            ]
        elif version <= self.seen:
            return
        try:
            sel = self._select(events)
        except Exception as e:  # a consumer's filter must not break apply
            self._fail(WatchError(f"watch filter raised {type(e).__name__}: {e}; watch closed"))
            return
        if version > self.seen:
            self.seen = version
        if not sel:
            return
        if len(self._queue) + len(sel) > self._limit:
            self._fail(
                WatchOverflow(
                    f"watcher fell behind: {len(self._queue) + len(sel)} events queued "
                    f"(limit {self._limit}) at version {version}; watch closed: "
                    "list again and start a new watch from the view's index"
                )
            )
            return
        self._queue.extend(sel)
        self._wake()


class WatchHub:
    """The store's watchers and its history ring of recent transactions."""

    def __init__(
        self,
        history_events: int = DEFAULT_HISTORY_EVENTS,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self.history_events = history_events
        self.queue_limit = queue_limit
        self._watchers: dict[int, Watch] = {}
        self._history: deque[tuple[int, tuple[Event, ...]]] = deque()
        self._history_len = 0
        # Every event with a version above the floor is still in the ring.
        self.floor = 0

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def watch(
        self,
        current_index: int,
        tables: frozenset[str] | None,
        from_version: int | None,
        filter: EventFilter | None,
        queue_limit: int | None,
    ) -> Watch:
        limit = self.queue_limit if queue_limit is None else queue_limit
        if from_version is None:
            w = Watch(self, tables, filter, limit, current_index)
        else:
            if from_version < self.floor:
                raise WatchCompacted(
                    f"cannot watch from version {from_version}: events up to version "
                    f"{self.floor} are no longer kept; list again and watch from the "
                    f"view's index (now {current_index})"
                )
            w = Watch(self, tables, filter, limit, from_version)
            for version, events in self._history:
                if version > from_version:
                    w._offer(version, events)
            if w.closed:  # the replay alone overflowed its queue
                assert w.error is not None
                raise w.error
        self._watchers[id(w)] = w
        return w

    def _remove(self, w: Watch) -> None:
        self._watchers.pop(id(w), None)

    def publish(self, version: int, events: tuple[Event, ...]) -> None:
        if not events:
            return
        self._history.append((version, events))
        self._history_len += len(events)
        while self._history_len > self.history_events and self._history:
            v, evs = self._history.popleft()
            self._history_len -= len(evs)
            self.floor = v
        for w in list(self._watchers.values()):
            w._offer(version, events)

    def publish_restore(self, version: int, events: tuple[Event, ...]) -> None:
        """After a restore to `version`: history starts over there, and every
        watcher gets the difference between the old and the new state."""
        self._history.clear()
        self._history_len = 0
        self.floor = version
        for w in list(self._watchers.values()):
            w._offer(version, events, restore=True)

    def close_all(self, err: WatchError | None = None) -> None:
        for w in list(self._watchers.values()):
            if err is None:
                w.close()
            else:
                w._fail(err)
