"""The replicated object store: in-memory tables, transactions, watches."""

from .errors import (
    AlreadyExists,
    ClaimConflict,
    Conflict,
    InvalidTx,
    NotFound,
    SnapshotError,
    StoreError,
    TxTooLarge,
    UnknownTable,
    WatchClosed,
    WatchCompacted,
    WatchError,
    WatchOverflow,
)
from .memory import MemoryStore, ReadView
from .ops import DEFAULT_MAX_TX_BYTES, Create, Delete, Op, TxResult, Update, encode_tx
from .tables import TABLE_NAMES
from .watch import Event, EventAction, Watch

__all__ = [
    "AlreadyExists",
    "ClaimConflict",
    "Conflict",
    "Create",
    "DEFAULT_MAX_TX_BYTES",
    "Delete",
    "Event",
    "EventAction",
    "InvalidTx",
    "MemoryStore",
    "NotFound",
    "Op",
    "ReadView",
    "SnapshotError",
    "StoreError",
    "TABLE_NAMES",
    "TxResult",
    "TxTooLarge",
    "UnknownTable",
    "Update",
    "Watch",
    "WatchClosed",
    "WatchCompacted",
    "WatchError",
    "WatchOverflow",
    "encode_tx",
]
