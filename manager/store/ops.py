"""Store transactions: the operations, their wire form, and apply results.

A write is a list of operations applied all-or-nothing. The proposer encodes
it with `encode_tx()`; the bytes are one Raft entry; every manager applies the
committed entry with `MemoryStore.apply(index, data)`.

Wire form (msgpack): `[TX_FORMAT, timestamp, [[op, table, payload, expect], ...]]`
where `op` is 1 create / 2 update / 3 delete, `payload` the object's
msgpack-ready dict (create, update) or its id (delete), and `expect` the
expected version (or nil: delete without a check). The timestamp is the
proposer's clock, carried so that every replica stamps the same
created_at/updated_at.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from api.errors import ValidationError
from api.objects import TABLE_MODELS

from .errors import (
    AlreadyExists,
    Conflict,
    InvalidTx,
    NotFound,
    StoreError,
    TxTooLarge,
)

if TYPE_CHECKING:
    from .intern import TaskSpecs
    from .watch import Event

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Create",
    "DEFAULT_MAX_TX_BYTES",
    "Delete",
    "InvalidTx",
    "NotFound",
    "Op",
    "OpCode",
    "StoreError",
    "TX_FORMAT",
    "TxResult",
    "TxTooLarge",
    "Update",
    "decode_tx",
    "encode_tx",
]

TX_FORMAT = 1
DEFAULT_MAX_TX_BYTES = 3 << 19  # 1.5 MiB: well under the Raft message size
# A decoded entry never needs more than this many ops; a bound keeps a hostile
# entry from making apply loop for long.
_MAX_OPS = 1 << 20


class OpCode(enum.IntEnum):
    CREATE = 1
    UPDATE = 2
    DELETE = 3


@dataclass(frozen=True, slots=True)
class Create:
    """Create `obj` in `table`: fails if its id or (unique) name is taken."""

    table: str
    obj: BaseModel


@dataclass(frozen=True, slots=True)
class Update:
    """Replace the object with `obj.id`: fails unless it exists and its
    version is `expect_version` (default: `obj.meta.version`, i.e. "the
    version I read")."""

    table: str
    obj: BaseModel
    expect_version: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete object `id`: fails unless it exists and, when
    `expect_version` is given, has that version."""

    table: str
    id: str
    expect_version: int | None = None


Op = Create | Update | Delete


@dataclass(frozen=True, slots=True)
class TxResult:
    """What applying one entry did. `index` is the entry's Raft index;
    `events` are the changes it made (empty when it failed); `error` says why
    it failed (`NotFound`, `AlreadyExists`, `Conflict`, `InvalidTx`)."""

    ok: bool
    index: int
    error: StoreError | None = None
    events: tuple[Event, ...] = field(default=())


def _check_table(i: int, table: str, obj: BaseModel | None) -> None:
    model = TABLE_MODELS.get(table)
    if model is None:
        raise ValueError(f"ops[{i}]: unknown table {table!r}; tables: {', '.join(sorted(TABLE_MODELS))}")
    if obj is not None and type(obj) is not model:
        raise TypeError(f"ops[{i}]: table {table!r} holds {model.__name__}, not {type(obj).__name__}")


def encode_tx(
    ops: Sequence[Op], *, now: float | None = None, max_bytes: int = DEFAULT_MAX_TX_BYTES,
    specs: TaskSpecs | None = None,
) -> bytes:
    """Encode a transaction as one Raft entry payload.

    Objects are validated here (a cheap round trip through their model) so a
    bad object is refused to its writer instead of costing a log entry.
    Raises `ValidationError` (field paths prefixed with the op), `TxTooLarge`,
    `ValueError`/`TypeError` for misuse (unknown table, wrong model).
    With `specs`, a task's spec is validated once per content (`intern`).
    """
    if not ops:
        raise ValueError("empty transaction: nothing to write")
    wire: list[list[Any]] = []
    for i, op in enumerate(ops):
        if isinstance(op, Create) or isinstance(op, Update):
            _check_table(i, op.table, op.obj)
            d = op.obj.model_dump()
            try:
                if specs is not None and op.table == "tasks":
                    specs.task(dict(d))
                else:
                    TABLE_MODELS[op.table].model_validate(d)
            except PydanticValidationError as e:
                raise ValidationError.from_pydantic(
                    e, what=f"ops[{i}] ({op.table} {getattr(op.obj, 'id', '?')})"
                ) from None
            if isinstance(op, Create):
                wire.append([OpCode.CREATE, op.table, d, None])
            else:
                ev = op.expect_version
                if ev is None:
                    ev = op.obj.meta.version  # type: ignore[attr-defined]
                wire.append([OpCode.UPDATE, op.table, d, int(ev)])
        elif isinstance(op, Delete):
            _check_table(i, op.table, None)
            if not isinstance(op.id, str) or not op.id:
                raise ValueError(f"ops[{i}]: delete needs an object id, got {op.id!r}")
            ev = None if op.expect_version is None else int(op.expect_version)
            wire.append([OpCode.DELETE, op.table, op.id, ev])
        else:
            raise TypeError(f"ops[{i}]: not a store operation: {op!r}")
    ts = time.time() if now is None else float(now)
    data: bytes = msgpack.packb([TX_FORMAT, ts, wire], use_bin_type=True)
    if len(data) > max_bytes:
        raise TxTooLarge(len(data), max_bytes)
    return data


@dataclass(frozen=True, slots=True)
class RawOp:
    """One op of a decoded entry; `payload` is not validated yet."""

    code: OpCode
    table: str
    payload: Any
    expect: int | None


def decode_tx(data: bytes) -> tuple[float, list[RawOp]]:
    """Check the structure of an entry; raises `InvalidTx` naming the fault."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidTx(f"malformed transaction: payload is {type(data).__name__}, not bytes")
    try:
        tx = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise InvalidTx(f"malformed transaction: not msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(tx, list) or len(tx) != 3:
        raise InvalidTx("malformed transaction: expected [format, timestamp, ops]")
    fmt, ts, ops = tx
    if fmt != TX_FORMAT or isinstance(fmt, bool):
        raise InvalidTx(f"malformed transaction: unknown format {fmt!r} (this manager reads {TX_FORMAT})")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise InvalidTx(f"malformed transaction: timestamp {ts!r} is not a finite number")
    if not isinstance(ops, list) or len(ops) > _MAX_OPS:
        raise InvalidTx("malformed transaction: ops is not a list (or is absurdly long)")
    out: list[RawOp] = []
    for i, op in enumerate(ops):
        if not isinstance(op, list) or len(op) != 4:
            raise InvalidTx(f"malformed transaction: ops[{i}] is not [op, table, payload, expect]")
        code, table, payload, expect = op
        try:
            code = OpCode(code)
        except ValueError:
            raise InvalidTx(f"malformed transaction: ops[{i}] has unknown op code {code!r}") from None
        if not isinstance(table, str) or table not in TABLE_MODELS:
            raise InvalidTx(f"ops[{i}]: unknown table {table!r}")
        if expect is not None and (isinstance(expect, bool) or not isinstance(expect, int)):
            raise InvalidTx(f"ops[{i}]: expected version {expect!r} is not an integer")
        if code is OpCode.UPDATE and expect is None:
            raise InvalidTx(f"ops[{i}]: update without an expected version")
        if code is OpCode.DELETE:
            if not isinstance(payload, str) or not payload:
                raise InvalidTx(f"ops[{i}]: delete payload must be an object id")
        elif not isinstance(payload, dict):
            raise InvalidTx(f"ops[{i}]: {code.name.lower()} payload must be an object")
        out.append(RawOp(code, table, payload, expect))
    return float(ts), out
