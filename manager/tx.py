"""Committing store transactions from the manager's own components
(dispatcher, orchestrators, CA): encode, replicate, raise on failure."""

from __future__ import annotations

from typing import Any

from manager.raft.driver import RaftNode
from manager.store import MemoryStore


class TxFailed(Exception):
    """The transaction was replicated but refused on apply (version
    conflict, missing object...): `cause` is the store's error."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def commit(raft: RaftNode, store: MemoryStore, ops: list[Any], *, timeout: float | None = None) -> Any:
    result = await raft.propose(store.encode_tx(ops), timeout=timeout)
    if not result.ok:
        raise TxFailed(result.error)
    return result
