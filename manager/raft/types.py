"""Data types shared by the Raft core, its persistence and its transport.

This module is the contract between the pure state machine (`core`), the
write-ahead log (`wal`), the snapshot files (`snap`) and the asyncio driver
(`driver`, `transport`). Everything here is plain data with a msgpack
encoding; nothing here does I/O.

The shape follows etcd-io/raft's raftpb: an `Entry` is a log record, a
`Message` is anything one node sends another (or feeds to itself, for the
local message types), `HardState` is what must be durable before a message
leaves the node, and `Ready` is the batch of work the core hands the driver.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgpack

NONE = 0  # "no node": node ids start at 1


class MessageType(enum.IntEnum):
    # Local messages: never sent over the network.
    HUP = 0  # start an election (pre-vote first when enabled)
    BEAT = 1  # leader: send heartbeats now
    PROP = 2  # proposal; a follower forwards it to the leader
    UNREACHABLE = 3  # driver reports a peer could not be reached
    SNAP_STATUS = 4  # driver reports a snapshot send finished (reject = failed)
    CHECK_QUORUM = 5  # leader: check that a quorum was active
    # Network messages.
    APP = 10
    APP_RESP = 11
    VOTE = 12
    VOTE_RESP = 13
    PRE_VOTE = 14
    PRE_VOTE_RESP = 15
    SNAP = 16  # one chunk of a snapshot (see Message.snapshot / chunk fields)
    SNAP_RESP = 17  # ack of a snapshot chunk
    HEARTBEAT = 18
    HEARTBEAT_RESP = 19
    TRANSFER_LEADER = 20
    TIMEOUT_NOW = 21
    READ_INDEX = 22
    READ_INDEX_RESP = 23


LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2


class StateRole(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def to_wire(self) -> list[Any]:
        return [self.term, self.index, int(self.type), self.data]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Entry:
        return cls(w[0], w[1], EntryType(w[2]), w[3])


@dataclass(slots=True)
class HardState:
    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == NONE and self.commit == 0

    def to_wire(self) -> list[int]:
        return [self.term, self.vote, self.commit]

    @classmethod
    def from_wire(cls, w: list[int]) -> HardState:
        return cls(w[0], w[1], w[2])


@dataclass(slots=True)
class ConfState:
    voters: list[int] = field(default_factory=list)
    learners: list[int] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [sorted(self.voters), sorted(self.learners)]

    @classmethod
    def from_wire(cls, w: list[Any]) -> ConfState:
        return cls(list(w[0]), list(w[1]))


@dataclass(slots=True)
class ConfChange:
    """A membership change, carried in the data of a CONF_CHANGE entry.

    `context` is opaque to Raft; the manager puts the new member's address
    there so every node learns how to reach it when the entry applies.
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb([int(self.type), self.node_id, self.context])

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        t, n, c = msgpack.unpackb(data)
        return cls(ConfChangeType(t), n, c)


@dataclass(slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, self.conf_state.to_wire()]

    @classmethod
    def from_wire(cls, w: list[Any]) -> SnapshotMeta:
        return cls(w[0], w[1], ConfState.from_wire(w[2]))


@dataclass(slots=True)
class Snapshot:
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.meta.index == 0

    def to_wire(self) -> list[Any]:
        return [self.meta.to_wire(), self.data]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Snapshot:
        return cls(SnapshotMeta.from_wire(w[0]), w[1])


@dataclass(slots=True)
class Message:
    """One Raft message.

    Snapshot transfer is chunked by the core: a SNAP message carries
    `snapshot.meta`, the bytes `snapshot.data` of one chunk starting at
    `chunk_offset`, and `chunk_last` on the final chunk. The follower answers
    each chunk with SNAP_RESP (index = snapshot index, chunk_offset = next
    offset wanted, reject = start over).
    """

    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    chunk_offset: int = 0
    chunk_last: bool = False
    context: bytes = b""

    def to_wire(self) -> list[Any]:
        return [
            int(self.type),
            self.to,
            self.frm,
            self.term,
            self.log_term,
            self.index,
            [e.to_wire() for e in self.entries],
            self.commit,
            self.reject,
            self.reject_hint,
            self.snapshot.to_wire() if self.snapshot is not None else None,
            self.chunk_offset,
            self.chunk_last,
            self.context,
        ]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Message:
        return cls(
            MessageType(w[0]),
            w[1],
            w[2],
            w[3],
            w[4],
            w[5],
            [Entry.from_wire(e) for e in w[6]],
            w[7],
            w[8],
            w[9],
            Snapshot.from_wire(w[10]) if w[10] is not None else None,
            w[11],
            w[12],
            w[13],
        )

    def encode(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Message:
        return cls.from_wire(msgpack.unpackb(data, raw=False))


@dataclass(slots=True)
class SoftState:
    lead: int = NONE
    role: StateRole = StateRole.FOLLOWER


@dataclass(slots=True)
class ReadState:
    """ReadIndex result: once applied index >= `index`, a read issued with
    `request_ctx` is linearizable."""

    index: int
    request_ctx: bytes


@dataclass(slots=True)
class Ready:
    """A batch of work the core hands to the driver.

    The driver must, in this order: persist `hard_state` (if not None),
    `entries` and `snapshot` (if not None) with one fsync when `must_sync`;
    then send `messages`; apply `snapshot` then `committed_entries` to the
    state machine; then call `advance(ready)`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False
