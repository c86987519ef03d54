"""Tables of the store and their indexes.

Each table keeps objects by id (primary), by name (unique, for named kinds;
an empty name is not indexed), and in secondary indexes declared in `TABLES`.
A secondary index maps a key to the ids having it, in an insertion-ordered
dict so iteration order never depends on string hashing.

Indexes of every table:
- "label": `(key, value)` pairs of `spec.labels`; "label_key": label keys.
Per table:
- tasks: "service_id", "node_id", "desired_state", "state" (status.state),
  "slot" (`(service_id, slot)`), "network" (ids of the networks it has an
  address on).
- nodes: "role" (observed role), "availability".
- stacks: by name and labels only.
- services: "mode".

Claims: keys an object holds against the others of its table, checked when a
transaction is applied (so two writers racing for one cannot both win, as
with names). A claim is exclusive (no other object may hold the key at all)
or shared (others may hold it, shared too). Services claim their published
ports (ingress mode exclusive, host mode shared: see
`api.objects.port_claims`); networks the ingress role (exclusive).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from api.objects import TABLE_MODELS, Model, port_claims, port_exclusive

KeyFunc = Callable[[Any], tuple[Hashable, ...]]
ClaimFunc = Callable[[Any], tuple[tuple[str, bool], ...]]
"""An object's claims: (key, exclusive); the key is what users are told is
taken, e.g. "published port 8080/tcp"."""


@dataclass(frozen=True, slots=True)
class TableDef:
    name: str
    model: type[Model]
    named: bool  # spec.name is unique (when non-empty)
    indexes: dict[str, KeyFunc]
    claims: ClaimFunc | None = None


def _labels(o: Any) -> tuple[Hashable, ...]:
    return tuple(o.spec.labels.items())


def _label_keys(o: Any) -> tuple[Hashable, ...]:
    return tuple(o.spec.labels)


_LABELED = {"label": _labels, "label_key": _label_keys}


def _service_claims(o: Any) -> tuple[tuple[str, bool], ...]:
    return tuple((f"published port {port}/{proto}", port_exclusive(mode))
                 for proto, port, mode in port_claims(o.spec.endpoint_spec, o.endpoint))


def _network_claims(o: Any) -> tuple[tuple[str, bool], ...]:
    return (("the ingress role", True),) if o.spec.ingress else ()

TABLES: dict[str, TableDef] = {
    "nodes": TableDef(
        "nodes",
        TABLE_MODELS["nodes"],
        True,
        {
            **_LABELED,
            "role": lambda o: (o.role,),
            "availability": lambda o: (o.spec.availability,),
        },
    ),
    "services": TableDef(
        "services", TABLE_MODELS["services"], True, {**_LABELED, "mode": lambda o: (o.spec.mode,)},
        _service_claims,
    ),
    "tasks": TableDef(
        "tasks",
        TABLE_MODELS["tasks"],
        False,
        {
            "service_id": lambda o: (o.service_id,),
            "node_id": lambda o: (o.node_id,),
            "desired_state": lambda o: (o.desired_state,),
            "state": lambda o: (o.status.state,),
            "slot": lambda o: ((o.service_id, o.slot),),
            "network": lambda o: tuple(a.network_id for a in o.networks),
        },
    ),
    "networks": TableDef("networks", TABLE_MODELS["networks"], True, dict(_LABELED), _network_claims),
    "secrets": TableDef("secrets", TABLE_MODELS["secrets"], True, dict(_LABELED)),
    "configs": TableDef("configs", TABLE_MODELS["configs"], True, dict(_LABELED)),
    "clusters": TableDef("clusters", TABLE_MODELS["clusters"], True, dict(_LABELED)),
    "stacks": TableDef("stacks", TABLE_MODELS["stacks"], True, dict(_LABELED)),
}
TABLE_NAMES: tuple[str, ...] = tuple(sorted(TABLES))


def name_of(defn: TableDef, obj: Any) -> str | None:
    if not defn.named:
        return None
    return obj.spec.name or None


class Table:
    """One table: rows by id plus the name and secondary indexes."""

    __slots__ = ("defn", "rows", "by_name", "indexes", "claims", "packed")

    def __init__(self, defn: TableDef) -> None:
        self.defn = defn
        self.rows: dict[str, Any] = {}
        self.by_name: dict[str, str] = {}
        self.indexes: dict[str, dict[Hashable, dict[str, None]]] = {n: {} for n in defn.indexes}
        self.claims: dict[str, dict[str, bool]] = {}  # claim key -> holder id -> exclusive
        # id -> the row's msgpack encoding, filled by snapshots and dropped on
        # writes, so a snapshot only encodes what changed since the last one.
        self.packed: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows.values())

    def put(self, obj: Any, old: Any | None) -> None:
        """Store `obj` (replacing `old`, the current row with its id, if any)."""
        oid = obj.id
        self.rows[oid] = obj
        self.packed.pop(oid, None)
        if self.defn.named:
            old_name = old.spec.name if old is not None else ""
            new_name = obj.spec.name
            if old_name != new_name and old_name and self.by_name.get(old_name) == oid:
                del self.by_name[old_name]
            if new_name:
                self.by_name[new_name] = oid
        if self.defn.claims is not None:
            new_claims = self.defn.claims(obj)
            old_claims = self.defn.claims(old) if old is not None else ()
            if new_claims != old_claims:
                self._unclaim(oid, old_claims)
                for key, exclusive in new_claims:
                    self.claims.setdefault(key, {})[oid] = exclusive
        for iname, keys in self.defn.indexes.items():
            new_keys = keys(obj)
            if old is not None:
                old_keys = keys(old)
                if old_keys == new_keys:
                    continue
                self._unindex(iname, oid, old_keys, new_keys)
            idx = self.indexes[iname]
            for k in new_keys:
                bucket = idx.get(k)
                if bucket is None:
                    idx[k] = {oid: None}
                else:
                    bucket[oid] = None

    def remove(self, old: Any) -> None:
        oid = old.id
        del self.rows[oid]
        self.packed.pop(oid, None)
        if self.defn.named:
            name = old.spec.name
            if name and self.by_name.get(name) == oid:
                del self.by_name[name]
        if self.defn.claims is not None:
            self._unclaim(oid, self.defn.claims(old))
        for iname, keys in self.defn.indexes.items():
            self._unindex(iname, oid, keys(old), ())

    def _unclaim(self, oid: str, claims: Iterable[tuple[str, bool]]) -> None:
        for key, _ in claims:
            holders = self.claims.get(key)
            if holders is not None:
                holders.pop(oid, None)
                if not holders:
                    del self.claims[key]

    def _unindex(
        self, iname: str, oid: str, old_keys: Iterable[Hashable], keep: tuple[Hashable, ...]
    ) -> None:
        idx = self.indexes[iname]
        for k in old_keys:
            if k in keep:
                continue
            bucket = idx.get(k)
            if bucket is not None:
                bucket.pop(oid, None)
                if not bucket:
                    del idx[k]

    def find_ids(self, index: str, key: Hashable) -> Iterable[str]:
        if index == "id":
            return (key,) if key in self.rows else ()  # type: ignore[return-value]
        if index == "name":
            oid = self.by_name.get(key) if self.defn.named else None  # type: ignore[arg-type]
            return (oid,) if oid is not None else ()
        idx = self.indexes.get(index)
        if idx is None:
            raise KeyError(index)
        return idx.get(key, {}).keys()
