"""Cluster events (`orch events`): the event record, its id (a cursor), and
the parsing of what users give `--since`, `--until` and `--filter`.

An event's id is "INDEX.SEQ": the Raft index of the store change it was
derived from and its rank among the events of that index. Every manager
derives the same events with the same ids from the replicated log, so a
client can resume on any manager from the last id it saw. Events a manager
records of its own (an exec it served: `scope` "local") take ranks from
EXEC_SEQ_BASE up, after every replicated event of their index.

Pure: used by the manager (the server) and the CLI alike.
"""

from __future__ import annotations

import datetime
import enum
import re
import time
from dataclasses import dataclass
from typing import Any

EXEC_SEQ_BASE = 1_000_000
"""Ranks at and above this are local events (never replicated)."""

MAX_SEQ = (1 << 31) - 1
"""The rank of a cursor "INDEX" (after every event of INDEX)."""

INDEX_MAX = 10**9
"""Plain numbers below this are Raft indexes, at or above it unix times."""


class EventType(enum.StrEnum):
    SERVICE = "service"
    TASK = "task"
    NODE = "node"
    NETWORK = "network"
    SECRET = "secret"
    CONFIG = "config"
    STACK = "stack"
    CLUSTER = "cluster"


class EventScope(enum.StrEnum):
    CLUSTER = "cluster"  # derived from the replicated store: the same on every manager
    LOCAL = "local"  # seen by one manager only (exec)


ACTIONS: dict[EventType, tuple[str, ...]] = {
    EventType.SERVICE: ("create", "update", "remove"),
    EventType.TASK: ("create", "state", "update", "remove", "exec"),
    EventType.NODE: ("create", "update", "down", "up", "remove"),
    EventType.NETWORK: ("create", "update", "remove"),
    EventType.SECRET: ("create", "update", "remove"),
    EventType.CONFIG: ("create", "update", "remove"),
    EventType.STACK: ("create", "update", "remove"),
    EventType.CLUSTER: ("create", "update", "remove", "leader"),
}
ALL_ACTIONS: frozenset[str] = frozenset(a for acts in ACTIONS.values() for a in acts)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event. On the wire (one JSON object a line, `to_dict`):
    {"id": "INDEX.SEQ", "index", "seq", "time", "type", "action",
     "actor": {"id", "name"}, "attributes": {str: str}, "scope"}.
    A plain slotted record, not a pydantic model: a manager keeps 10,000 of
    them (a third of the memory); `from_dict` validates what comes in."""

    index: int
    seq: int
    time: float  # unix seconds: the transaction's time (the leader's clock)
    type: EventType
    action: str
    actor_id: str
    actor_name: str
    attributes: dict[str, str]
    scope: EventScope = EventScope.CLUSTER

    @property
    def id(self) -> str:
        return event_id(self.index, self.seq)

    @property
    def cursor(self) -> tuple[int, int]:
        return (self.index, self.seq)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "index": self.index, "seq": self.seq, "time": self.time,
                "type": self.type.value, "action": self.action,
                "actor": {"id": self.actor_id, "name": self.actor_name},
                "attributes": dict(self.attributes), "scope": self.scope.value}

    @classmethod
    def from_dict(cls, d: Any) -> EventRecord:
        """The record a JSON line holds; ValueError naming the bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"event: must be an object, got {type(d).__name__}")

        def field(name: str, kind: type | tuple[type, ...]) -> Any:
            v = d.get(name)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise ValueError(f"event.{name}: missing or of the wrong type ({v!r})")
            return v

        index, seq = field("index", int), field("seq", int)
        if index < 0 or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"event: index {index} / seq {seq} out of range")
        if "id" in d and d["id"] != event_id(index, seq):
            raise ValueError(f"event.id: {d['id']!r} is not index.seq ({event_id(index, seq)})")
        try:
            typ = EventType(field("type", str))
            scope = EventScope(d.get("scope", "cluster"))
        except ValueError as e:
            raise ValueError(f"event: {e}") from None
        actor = d.get("actor", {})
        attrs = d.get("attributes", {})
        if not isinstance(actor, dict) or not all(isinstance(actor.get(k, ""), str) for k in ("id", "name")):
            raise ValueError("event.actor: must be {id, name} strings")
        if not isinstance(attrs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
            raise ValueError("event.attributes: must map strings to strings")
        return cls(index, seq, float(field("time", (int, float))), typ, field("action", str),
                   actor.get("id", ""), actor.get("name", ""), dict(attrs), scope)


JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "INDEX.SEQ: the same on every manager"},
        "index": {"type": "integer", "minimum": 0, "description": "Raft index of the change"},
        "seq": {"type": "integer", "minimum": 0, "description": f"rank within the index ({EXEC_SEQ_BASE}+: local)"},
        "time": {"type": "number", "description": "unix seconds"},
        "type": {"enum": [t.value for t in EventType]},
        "action": {"enum": sorted({a for acts in ACTIONS.values() for a in acts})},
        "actor": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}}},
        "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
        "scope": {"enum": [s.value for s in EventScope]},
    },
    "required": ["id", "index", "seq", "time", "type", "action", "actor", "attributes", "scope"],
}
"""The record's schema, for the OpenAPI document."""


def event_id(index: int, seq: int) -> str:
    return f"{index}.{seq}"


# -- --since / --until ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """A parsed --since/--until: a cursor (index, seq) or a unix time."""

    cursor: tuple[int, int] | None = None
    time: float | None = None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_CURSOR = re.compile(r"(\d+)(?:\.(\d+))?")


def parse_duration(text: str) -> float | None:
    """"10m", "1h30m", "45s", "500ms" -> seconds; None if it is not one."""
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def parse_bound(text: str, what: str = "since", now: float | None = None) -> Bound:
    """Parse a --since/--until value:
    - "1234" or "1234.5": an event id (Raft index, optionally its rank): after
      that event ("1234": after every event of index 1234);
    - a duration ("10m", "1h30m", "45s"): that long before now;
    - a unix time (a number >= 1e9) or an ISO 8601 time ("2026-12-02T03:30:00Z";
      UTC when it names no zone).
    Raises ValueError naming the option and what it accepts."""
    t = text.strip()
    if not t:
        raise ValueError(f"--{what}: empty value")
    m = _CURSOR.fullmatch(t)
    if m is not None and int(m.group(1)) < INDEX_MAX:
        index = int(m.group(1))
        seq = MAX_SEQ if m.group(2) is None else int(m.group(2))
        if seq > MAX_SEQ:
            raise ValueError(f"--{what}: event id {t!r}: rank {seq} is out of range")
        return Bound(cursor=(index, seq))
    d = parse_duration(t)
    if d is not None:
        return Bound(time=(time.time() if now is None else now) - d)
    try:
        v = float(t)
    except ValueError:
        pass
    else:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"--{what}: {t!r} is not a time")
        return Bound(time=v)
    try:
        dt = datetime.datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(
            f"--{what}: {t!r} is neither an event id (e.g. 1234 or 1234.2), a duration "
            "(e.g. 10m, 1h30m), a unix time nor an ISO 8601 time (e.g. 2026-12-02T03:30:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return Bound(time=dt.timestamp())


# -- --filter ------------------------------------------------------------------

FILTER_KEYS = ("type", "event", "service", "node", "task", "id", "scope")


def parse_filters(items: list[str] | tuple[str, ...]) -> dict[str, frozenset[str]]:
    """["type=service,event=create", "type=task"] -> {"type": {service, task},
    "event": {create}}. Values of one key are alternatives, keys must all
    match. Raises ValueError naming the bad item."""
    out: dict[str, set[str]] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise ValueError(f"--filter {item!r}: {part!r} is not KEY=VALUE")
            if key not in FILTER_KEYS:
                raise ValueError(f"--filter {item!r}: unknown key {key!r}; keys: {', '.join(FILTER_KEYS)}")
            if key == "type" and value not in EventType.__members__.values():
                raise ValueError(f"--filter {item!r}: unknown type {value!r}; types: "
                                 f"{', '.join(t.value for t in EventType)}")
            if key == "event" and value not in ALL_ACTIONS:
                raise ValueError(f"--filter {item!r}: unknown event {value!r}; events: "
                                 f"{', '.join(sorted(ALL_ACTIONS))}")
            if key == "scope" and value not in EventScope.__members__.values():
                raise ValueError(f"--filter {item!r}: scope is cluster or local")
            out.setdefault(key, set()).add(value)
    return {k: frozenset(v) for k, v in out.items()}


def _ref_matches(values: frozenset[str], name: str, oid: str) -> bool:
    return any(v == name or (oid and oid.startswith(v)) for v in values)


def matches(rec: EventRecord, filters: dict[str, frozenset[str]]) -> bool:
    """Whether `rec` passes every key of `filters` (see `parse_filters`)."""
    a = rec.attributes
    for key, values in filters.items():
        if key == "type":
            ok = rec.type.value in values
        elif key == "event":
            ok = rec.action in values
        elif key == "scope":
            ok = rec.scope.value in values
        elif key == "id":
            ok = _ref_matches(values, rec.actor_name, rec.actor_id)
        elif key in ("service", "node", "task"):
            if rec.type.value == key:
                ok = _ref_matches(values, rec.actor_name, rec.actor_id)
            else:
                ok = _ref_matches(values, a.get(key, ""), a.get(f"{key}.id", ""))
        else:  # parse_filters refuses other keys
            ok = False
        if not ok:
            return False
    return True
