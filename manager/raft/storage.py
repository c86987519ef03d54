"""Stable log storage the Raft core reads from.

`MemoryStorage` mirrors what the driver has made durable (WAL + snapshot):
entries after the newest snapshot, the hard state and the snapshot itself.
Index arithmetic is positional: `ents[0]` is a dummy entry holding the
snapshot's (index, term), so entry i lives at `ents[i - ents[0].index]`.
"""

from __future__ import annotations

from typing import Protocol

from .types import ConfState, Entry, HardState, Snapshot, SnapshotMeta


class StorageError(Exception):
    pass


class Compacted(StorageError):
    """The requested index is older than the first available entry."""


class Unavailable(StorageError):
    """The requested index is newer than the last entry."""


class SnapshotOutOfDate(StorageError):
    pass


class SnapshotTemporarilyUnavailable(StorageError):
    pass


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...
    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]: ...
    def term(self, i: int) -> int: ...
    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def snapshot(self) -> Snapshot: ...


def entry_size(e: Entry) -> int:
    return len(e.data) + 24


def limit_size(ents: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Keep a prefix of `ents` within `max_bytes` (always at least one)."""
    if max_bytes is None or not ents:
        return ents
    total = entry_size(ents[0])
    for i in range(1, len(ents)):
        total += entry_size(ents[i])
        if total > max_bytes:
            return ents[:i]
    return ents


class MemoryStorage:
    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self.ents: list[Entry] = [Entry(0, 0)]

    def initial_state(self) -> tuple[HardState, ConfState]:
        cs = self._snapshot.meta.conf_state
        return (
            HardState(self.hard_state.term, self.hard_state.vote, self.hard_state.commit),
            ConfState(list(cs.voters), list(cs.learners)),
        )

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = HardState(hs.term, hs.vote, hs.commit)

    def _offset(self) -> int:
        return self.ents[0].index

    def first_index(self) -> int:
        return self._offset() + 1

    def last_index(self) -> int:
        return self.ents[0].index + len(self.ents) - 1

    def term(self, i: int) -> int:
        off = self._offset()
        if i < off:
            raise Compacted(f"index {i} compacted (first {off + 1})")
        if i - off >= len(self.ents):
            raise Unavailable(f"index {i} beyond last {self.last_index()}")
        return self.ents[i - off].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        off = self._offset()
        if lo <= off:
            raise Compacted(f"index {lo} compacted (first {off + 1})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"entries up to {hi - 1} requested, last is {self.last_index()}")
        return limit_size(self.ents[lo - off : hi - off], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def apply_snapshot(self, snap: Snapshot) -> None:
        if snap.meta.index <= self._snapshot.meta.index and not self._snapshot.is_empty():
            raise SnapshotOutOfDate(
                f"snapshot {snap.meta.index} is not newer than {self._snapshot.meta.index}"
            )
        self._snapshot = snap
        self.ents = [Entry(snap.meta.term, snap.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDate(f"snapshot at {index} is not newer than {self._snapshot.meta.index}")
        if index > self.last_index():
            raise Unavailable(f"snapshot index {index} beyond last {self.last_index()}")
        term = self.ents[index - self._offset()].term
        self._snapshot = Snapshot(
            SnapshotMeta(index, term, ConfState(list(conf_state.voters), list(conf_state.learners))),
            data,
        )
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries before `index` (the entry at `index` becomes the dummy)."""
        off = self._offset()
        if index <= off:
            return
        if index > self.last_index():
            raise Unavailable(f"compact {index} beyond last {self.last_index()}")
        i = index - off
        self.ents = [Entry(self.ents[i].term, self.ents[i].index)] + self.ents[i + 1 :]

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        off = entries[0].index - self._offset()
        if off > len(self.ents):
            raise StorageError(
                f"missing log entry: last {self.last_index()}, appending at {entries[0].index}"
            )
        del self.ents[off:]
        self.ents.extend(entries)
