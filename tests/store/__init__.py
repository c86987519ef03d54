"""Tests of the replicated object store; small builders shared by its modules."""

from __future__ import annotations

from collections.abc import Sequence

from api.objects import (
    Config,
    ConfigSpec,
    ContainerSpec,
    Node,
    NodeRole,
    NodeSpec,
    Task,
    TaskSpec,
    TaskState,
)
from manager.store import MemoryStore, Op, TxResult


def cfg(id: str, name: str | None = None, data: bytes = b"x", **labels: str) -> Config:
    return Config(id=id, spec=ConfigSpec(name=name or id, labels=labels, data=data))


def task(
    id: str,
    service_id: str = "svc",
    node_id: str = "",
    slot: int = 1,
    desired: TaskState = TaskState.RUNNING,
) -> Task:
    return Task(
        id=id,
        service_id=service_id,
        node_id=node_id,
        slot=slot,
        desired_state=desired,
        spec=TaskSpec(container=ContainerSpec(image="busybox")),
    )


def node(id: str, role: NodeRole = NodeRole.WORKER, **labels: str) -> Node:
    return Node(id=id, role=role, spec=NodeSpec(labels=labels))


class Feeder:
    """Plays the Raft driver: encodes txs and applies them at increasing
    indexes, optionally to several replicas, recording the entries."""

    def __init__(self, *stores: MemoryStore, start: int = 0) -> None:
        self.stores = stores
        self.index = start
        self.entries: list[tuple[int, bytes | None]] = []
        self.now = 1000.0

    def tx(self, *ops: Op) -> TxResult:
        self.now += 1.0
        return self.raw(self.stores[0].encode_tx(list(ops), now=self.now))

    def raw(self, data: bytes) -> TxResult:
        self.index += 1
        self.entries.append((self.index, data))
        results = [s.apply(self.index, data) for s in self.stores]
        return results[0]

    def noop(self) -> None:
        self.index += 1
        self.entries.append((self.index, None))
        for s in self.stores:
            s.apply_noop(self.index)


def replay(entries: Sequence[tuple[int, bytes | None]], store: MemoryStore) -> None:
    for index, data in entries:
        if data is None:
            store.apply_noop(index)
        else:
            store.apply(index, data)
