"""Errors of the store: failed transactions, oversized ones, broken watches.

A failed transaction is not an exception on the apply path: `apply()` returns
a `TxResult` whose `error` is one of the `StoreError` subclasses below, the
same on every replica. The proposer (control API, orchestrators) turns it into
an HTTP status or a retry.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of store errors; `str()` is a complete message for users."""


class NotFound(StoreError):
    """An update or delete named an object that does not exist."""


class AlreadyExists(StoreError):
    """A create used an id or a name that is taken."""


class Conflict(StoreError):
    """An update or delete expected a version the object no longer has."""


class ClaimConflict(Conflict):
    """A write would take a key another object holds (a published port, the
    ingress role: see `tables` claims). Deciding again does not help; the
    writer must choose another key or wait for the holder to give it up."""


class InvalidTx(StoreError):
    """A transaction that cannot be applied as written: malformed entry,
    unknown table, invalid object."""


class TxTooLarge(StoreError):
    """The encoded transaction is over the size limit for one Raft entry."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"transaction too large: {_human(size)} ({size} bytes) encoded, "
            f"over the limit of {_human(limit)} ({limit} bytes) for one Raft entry; "
            "split it into smaller transactions"
        )


class UnknownTable(StoreError, KeyError):
    """A read named a table or index the store does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SnapshotError(StoreError):
    """`restore()` was given data that is not a store snapshot; the state is
    unchanged."""


class WatchError(StoreError):
    """Base of the errors a watch ends with."""


class WatchCompacted(WatchError):
    """`from_version` is older than the event history kept: list the tables
    again, then watch from the view's index."""


class WatchOverflow(WatchError):
    """The watcher fell too far behind and was closed; apply never waits for
    a watcher. List again and start a new watch."""


class WatchClosed(WatchError):
    """The watch was closed by its owner (`close()`)."""


def _human(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"
