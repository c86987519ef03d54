"""MemoryStore: the replicated object store's state machine.

Every manager holds one. The Raft driver feeds it every committed entry, in
order, on every replica: `apply(index, data)` for store transactions,
`apply_noop(index)` for anything else; `snapshot()`/`restore()` move the
whole state. Apply is deterministic (no clock, no randomness, no iteration
over hash-ordered sets) so replicas fed the same entries hold identical
state, byte for byte in their snapshots.

Reads go through `view()`. Stored objects are immutable models and are
handed out as they are: reading copies nothing, and nobody can change stored
state except through a transaction.

Apply never raises for a bad entry: it returns a failed `TxResult`, because
an exception would stop the replica while the others go on.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Hashable, Sequence
from typing import Any

import msgpack
from pydantic import ValidationError as PydanticValidationError

from api.errors import ValidationError

from .errors import (
    AlreadyExists,
    ClaimConflict,
    Conflict,
    InvalidTx,
    NotFound,
    SnapshotError,
    StoreError,
    UnknownTable,
)
from .intern import TaskSpecs
from .ops import DEFAULT_MAX_TX_BYTES, Op, OpCode, TxResult, decode_tx, encode_tx
from .tables import TABLE_NAMES, TABLES, Table, name_of
from .watch import (
    DEFAULT_HISTORY_EVENTS,
    DEFAULT_QUEUE_LIMIT,
    Event,
    EventAction,
    EventFilter,
    Watch,
    WatchHub,
)

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_DELETED = None  # staged value of a deleted row


class ReadView:
    """Read access to the store's current state.

    A view reads live state: the store only changes in `apply`/`restore`,
    which run between awaits of the event loop, so reads made without an
    await in between are consistent with each other and with `index` (the
    store's index when the view was taken). To read and then follow changes:
    take the view, read what you need (no await), then
    `store.watch(from_version=view.index)`, which may come after awaits: its
    replay covers whatever changed in between.
    """

    __slots__ = ("_store", "index")

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.index = store.index

    def _table(self, table: str) -> Table:
        t = self._store._tables.get(table)
        if t is None:
            raise UnknownTable(f"no table {table!r}; tables: {', '.join(TABLE_NAMES)}")
        return t

    def get(self, table: str, id: str) -> Any | None:
        return self._table(table).rows.get(id)

    def get_by_name(self, table: str, name: str) -> Any | None:
        t = self._table(table)
        oid = t.by_name.get(name)
        return None if oid is None else t.rows[oid]

    def find(self, table: str, index: str, value: Hashable) -> list[Any]:
        """Objects whose `index` has key `value` ("id", "name", or one of
        the table's secondary indexes, see `manager.store.tables`)."""
        t = self._table(table)
        try:
            ids = t.find_ids(index, value)
        except KeyError:
            raise UnknownTable(
                f"table {table!r} has no index {index!r}; indexes: "
                f"{', '.join(['id', 'name', *t.defn.indexes])}"
            ) from None
        rows = t.rows
        return [rows[i] for i in ids]

    def list(self, table: str) -> list[Any]:
        return list(self._table(table).rows.values())

    def count(self, table: str) -> int:
        return len(self._table(table).rows)


class MemoryStore:
    """The object store: tables, transactions, watches, snapshots."""

    def __init__(
        self,
        *,
        max_tx_bytes: int = DEFAULT_MAX_TX_BYTES,
        history_events: int = DEFAULT_HISTORY_EVENTS,
        watch_queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self.max_tx_bytes = max_tx_bytes
        self._tables: dict[str, Table] = {n: Table(TABLES[n]) for n in TABLE_NAMES}
        self._index = 0
        self._hub = WatchHub(history_events, watch_queue_limit)
        self._specs = TaskSpecs()  # tasks' specs validated once per content, shared
        # Index of the last snapshot restore (0: none): a consumer deriving a
        # history from watch events learns here that it has a gap below it.
        self.restored_index = 0

    @property
    def index(self) -> int:
        """Raft index of the last applied entry."""
        return self._index

    def view(self) -> ReadView:
        return ReadView(self)

    def encode_tx(self, ops: Sequence[Op], *, now: float | None = None) -> bytes:
        """`ops.encode_tx` with this store's size limit."""
        return encode_tx(ops, now=now, max_bytes=self.max_tx_bytes, specs=self._specs)

    # -- apply -------------------------------------------------------------------

    def apply_noop(self, index: int) -> None:
        """Advance the applied index for an entry that is not a transaction."""
        if index > self._index:
            self._index = index

    def apply(self, index: int, data: bytes) -> TxResult:
        """Apply one committed entry: all its ops or none. Never raises for a
        bad entry (returns `ok=False` with the reason)."""
        if index <= self._index:
            # The driver never does this; refuse rather than rewind versions.
            return TxResult(
                False,
                index,
                InvalidTx(f"entry {index} is not after the applied index {self._index}; ignored"),
            )
        try:
            events, staged = self._check(index, data)
        except StoreError as e:
            self._index = index
            return TxResult(False, index, e)
        except Exception as e:  # a bug must fail the tx the same way everywhere, not stop us
            log.error("store: entry %d failed unexpectedly: %r", index, e, exc_info=True)
            self._index = index
            return TxResult(False, index, InvalidTx(f"transaction failed: {type(e).__name__}: {e}"))
        # Commit: plain dict updates that cannot fail half-way.
        tables = self._tables
        for (table, oid), new in staged.items():
            t = tables[table]
            old = t.rows.get(oid)
            if new is _DELETED:
                if old is not None:
                    t.remove(old)
            else:
                t.put(new, old)
        self._index = index
        evs = tuple(events)
        self._hub.publish(index, evs)
        return TxResult(True, index, None, evs)

    def _check(self, index: int, data: bytes) -> tuple[list[Event], dict[tuple[str, str], Any]]:
        """Check every op against the state as the earlier ops of the same tx
        leave it; return the events and the final staged rows. No mutation."""
        ts, raw_ops = decode_tx(data)
        tables = self._tables
        staged: dict[tuple[str, str], Any] = {}
        # (table, name) -> owning id, or None once released within this tx.
        names: dict[tuple[str, str], str | None] = {}
        events: list[Event] = []

        def current(t: Table, table: str, oid: str) -> Any | None:
            key = (table, oid)
            if key in staged:
                return staged[key]
            return t.rows.get(oid)

        def owner(t: Table, table: str, name: str) -> str | None:
            key = (table, name)
            if key in names:
                return names[key]
            return t.by_name.get(name)

        for i, op in enumerate(raw_ops):
            t = tables[op.table]
            defn = t.defn
            what = f"{op.code.name.lower()} {op.table}"
            if op.code is OpCode.DELETE:
                oid = op.payload
                cur = current(t, op.table, oid)
                if cur is None:
                    raise NotFound(f"{what}/{oid}: no such object")
                if op.expect is not None and cur.meta.version != op.expect:
                    raise Conflict(
                        f"{what}/{oid}: version mismatch: expected {op.expect}, "
                        f"actual {cur.meta.version} (changed since it was read; read again and retry)"
                    )
                name = name_of(defn, cur)
                if name is not None:
                    names[(op.table, name)] = None
                staged[(op.table, oid)] = _DELETED
                events.append(Event(index, EventAction.DELETE, op.table, cur, cur, ts))
                continue
            payload = op.payload
            pid = payload.get("id")
            cur = current(t, op.table, pid) if isinstance(pid, str) else None
            # The store's meta goes into the payload before validation: one
            # model build per op, no copies afterwards.
            if op.code is OpCode.CREATE:
                if cur is not None:
                    raise AlreadyExists(f"{what}/{pid}: an object with this id already exists")
                payload["meta"] = {"version": index, "created_at": ts, "updated_at": ts}
            elif cur is not None:
                cm = cur.meta
                if cm.version != op.expect:
                    raise Conflict(
                        f"{what}/{pid}: version mismatch: expected {op.expect}, "
                        f"actual {cm.version} (changed since it was read; read again and retry)"
                    )
                # max(): a new leader's clock may lag the old one's.
                payload["meta"] = {
                    "version": index,
                    "created_at": cm.created_at,
                    "updated_at": max(ts, cm.updated_at),
                }
            elif isinstance(pid, str):
                raise NotFound(f"{what}/{pid}: no such object")
            try:
                new = self._specs.task(payload) if op.table == "tasks" else defn.model.model_validate(payload)
            except PydanticValidationError as e:
                raise InvalidTx(
                    f"{what}/{pid if isinstance(pid, str) else '?'}: invalid object: "
                    f"{ValidationError.from_pydantic(e)}"
                ) from None
            oid = new.id
            name = name_of(defn, new)
            if op.code is OpCode.CREATE:
                if name is not None:
                    holder = owner(t, op.table, name)
                    if holder is not None:
                        raise AlreadyExists(
                            f"{what}/{oid}: name {name!r} is already used by {op.table}/{holder}"
                        )
                    names[(op.table, name)] = oid
                staged[(op.table, oid)] = new
                events.append(Event(index, EventAction.CREATE, op.table, new, None, ts))
            else:  # UPDATE of an existing object
                old_name = name_of(defn, cur)
                if name != old_name:
                    if name is not None:
                        holder = owner(t, op.table, name)
                        if holder is not None and holder != oid:
                            raise AlreadyExists(
                                f"{what}/{oid}: name {name!r} is already used by {op.table}/{holder}"
                            )
                        names[(op.table, name)] = oid
                    if old_name is not None:
                        names[(op.table, old_name)] = None
                staged[(op.table, oid)] = new
                events.append(Event(index, EventAction.UPDATE, op.table, new, cur, ts))
        self._check_claims(staged)
        return events, staged

    def _check_claims(self, staged: dict[tuple[str, str], Any]) -> None:
        """Claims as the transaction leaves them (see `tables`): an object
        whose claims it changes may not take a key another object holds
        exclusively, nor take exclusively a key another holds. Objects whose
        claims did not change are not judged again. The holder named is the
        least id, so every replica gives the same message."""
        by_table: dict[str, dict[str, Any]] = {}
        for (table, oid), new in staged.items():
            if TABLES[table].claims is not None:
                by_table.setdefault(table, {})[oid] = new
        for table, rows in by_table.items():
            t = self._tables[table]
            claim = t.defn.claims
            assert claim is not None
            staged_holders: dict[str, dict[str, bool]] = {}
            changed: list[tuple[str, tuple[tuple[str, bool], ...]]] = []
            for oid, new in rows.items():
                if new is _DELETED:
                    continue
                mine = claim(new)
                for key, exclusive in mine:
                    staged_holders.setdefault(key, {})[oid] = exclusive
                old = t.rows.get(oid)
                if old is None or claim(old) != mine:
                    changed.append((oid, mine))
            for oid, mine in changed:
                for key, exclusive in mine:
                    holders = {o: e for o, e in t.claims.get(key, {}).items() if o not in rows}
                    holders.update(staged_holders.get(key, {}))
                    others = sorted(o for o, e in holders.items() if o != oid and (e or exclusive))
                    if others:
                        holder = rows.get(others[0]) or t.rows[others[0]]
                        name = name_of(t.defn, holder)
                        by = f'{table.rstrip("s")} "{name}" ({table}/{holder.id})' if name else f"{table}/{holder.id}"
                        raise ClaimConflict(f"{table}/{oid}: {key} is already used by {by}")

    # -- watches -------------------------------------------------------------------

    def watch(
        self,
        tables: set[str] | frozenset[str] | None = None,
        from_version: int | None = None,
        filter: EventFilter | None = None,
        *,
        queue_limit: int | None = None,
    ) -> Watch:
        """Follow changes. With `from_version`, first replay every kept event
        with a greater version (raises `WatchCompacted` if some are no longer
        kept). `tables` and `filter` select events; `queue_limit` overrides
        the store's per-watcher limit."""
        if tables is not None:
            unknown = set(tables) - set(TABLE_NAMES)
            if unknown:
                raise UnknownTable(
                    f"cannot watch unknown table(s) {sorted(unknown)}; tables: {', '.join(TABLE_NAMES)}"
                )
            tables = frozenset(tables)
        return self._hub.watch(self._index, tables, from_version, filter, queue_limit)

    @property
    def watchers(self) -> int:
        return self._hub.watchers

    @property
    def history_floor(self) -> int:
        """Events with versions above this are kept for `from_version`."""
        return self._hub.floor

    # -- snapshots -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as msgpack: `{"format", "index", "tables": {name:
        [object dicts sorted by id]}}`; identical bytes on identical state.

        Rows are encoded once and the encoding kept until the row changes,
        so a snapshot costs a sort plus the encoding of rows written since the
        previous one."""
        packer = msgpack.Packer(use_bin_type=True)
        pack = packer.pack
        parts = [
            packer.pack_map_header(3),
            pack("format"),
            pack(SNAPSHOT_FORMAT),
            pack("index"),
            pack(self._index),
            pack("tables"),
            packer.pack_map_header(len(TABLE_NAMES)),
        ]
        for name in TABLE_NAMES:
            t = self._tables[name]
            rows, packed = t.rows, t.packed
            parts.append(pack(name))
            parts.append(packer.pack_array_header(len(rows)))
            for k in sorted(rows):
                b = packed.get(k)
                if b is None:
                    b = packed[k] = pack(rows[k].model_dump())
                parts.append(b)
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's. Watchers get the difference
        as events at the snapshot's index (nothing missed, nothing repeated)
        and the history restarts there. Raises `SnapshotError` for bad data,
        leaving the state as it was."""
        # Loading makes many long-lived objects at once: the cyclic GC would
        # rescan the growing heap over and over for nothing.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            index, new_tables = self._load(data, self._specs)
            events = self._diff(index, new_tables) if self._hub.watchers else ()
            self._tables = new_tables
            self._index = index
            self.restored_index = index
            self._hub.publish_restore(index, events)
        finally:
            if gc_was_on:
                gc.enable()

    def _diff(self, index: int, new_tables: dict[str, Table]) -> tuple[Event, ...]:
        events: list[Event] = []
        for name in TABLE_NAMES:
            old_rows = self._tables[name].rows
            new_rows = new_tables[name].rows
            for oid, new in new_rows.items():
                old = old_rows.get(oid)
                if old is None:
                    events.append(Event(index, EventAction.CREATE, name, new, None))
                elif old != new:
                    events.append(Event(index, EventAction.UPDATE, name, new, old))
            for oid, old in old_rows.items():
                if oid not in new_rows:
                    events.append(Event(index, EventAction.DELETE, name, old, old))
        return tuple(events)

    @staticmethod
    def _load(data: bytes, specs: TaskSpecs) -> tuple[int, dict[str, Table]]:
        try:
            snap = msgpack.unpackb(data, raw=False)
        except Exception as e:
            raise SnapshotError(f"store snapshot is not msgpack: {type(e).__name__}: {e}") from None
        if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError("not a store snapshot (missing or unknown format)")
        index = snap.get("index")
        raw_tables = snap.get("tables")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise SnapshotError(f"store snapshot has a bad index {index!r}")
        if not isinstance(raw_tables, dict):
            raise SnapshotError("store snapshot has no tables")
        unknown = set(raw_tables) - set(TABLE_NAMES)
        if unknown:
            raise SnapshotError(f"store snapshot has unknown tables {sorted(unknown)}")
        tables = {n: Table(TABLES[n]) for n in TABLE_NAMES}
        for name in TABLE_NAMES:
            t = tables[name]
            rows = raw_tables.get(name, [])
            if not isinstance(rows, list):
                raise SnapshotError(f"store snapshot: table {name!r} is not a list")
            for i, row in enumerate(rows):
                try:
                    obj = specs.task(row) if name == "tasks" else t.defn.model.model_validate(row)
                except PydanticValidationError as e:
                    raise SnapshotError(
                        f"store snapshot: {name}[{i}]: {ValidationError.from_pydantic(e)}"
                    ) from None
                if obj.id in t.rows:
                    raise SnapshotError(f"store snapshot: {name}: duplicate id {obj.id!r}")
                n = name_of(t.defn, obj)
                if n is not None and n in t.by_name:
                    raise SnapshotError(f"store snapshot: {name}: duplicate name {n!r}")
                t.put(obj, None)
                t.packed[obj.id] = msgpack.packb(obj.model_dump(), use_bin_type=True)
        return index, tables
