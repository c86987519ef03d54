"""The asyncio shell around the Raft core.

`RaftNode` owns everything the pure core must not touch: the clock (a tick
task), persistence (WAL + snapshot files, one fsync per Ready batch), the
transport, the apply loop into the replicated state machine, and the futures
of callers waiting for their proposals or linearizable reads.

Ordering per Ready, which is what makes acknowledgements safe: snapshot file
and WAL records (hard state + entries) are made durable first, only then are
messages handed to the transport, then committed entries are applied, then
`advance`. The WAL write + fsync runs on one dedicated I/O thread (the only
thread: fsync blocks, and a blocked loop could neither take new proposals nor
move messages). While it runs, requests and peer messages keep being stepped
into the core; they land in the next Ready, which is how proposals batch into
one fsync (group commit), as etcd's raft node does between Ready and Advance.

Entry payloads carry an envelope `[origin node id, sequence, payload]` so the
node that proposed an entry can hand its caller the state machine's result
when the entry applies, whichever leader committed it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from api.probe import NULL_PROBE, Probe

from .core import Config, ProposalDropped, RawNode
from .snap import Snapshotter
from .storage import MemoryStorage
from .transport import Transport
from .types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
    StateRole,
)
from .wal import WAL

log = logging.getLogger(__name__)

_LEADER_EARLY = frozenset(
    {MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP, MessageType.TIMEOUT_NOW}
)


class StateMachine(Protocol):
    def apply(self, index: int, data: bytes) -> Any: ...
    def apply_noop(self, index: int) -> None: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class RaftError(Exception):
    """Base of the errors callers of RaftNode see."""


class NotLeader(RaftError):
    def __init__(self, leader: int, msg: str) -> None:
        super().__init__(msg)
        self.leader = leader


class NoLeader(RaftError):
    pass


class Timeout(RaftError):
    """The outcome is unknown: the operation may or may not take effect."""


class Stopped(RaftError):
    pass


@dataclass
class RaftSettings:
    """How a manager runs its Raft replica: the core's timers and limits
    (passed on to `core.Config`, where they are described at length) and
    the driver's own clock, persistence and timeouts.

    Times are seconds unless they say ticks (one tick = tick_interval);
    sizes are bytes. Every field is checked when the settings are made; a
    bad one raises core.ConfigError naming it, the rule and the value.
    """

    # Seconds between two ticks of the core's clock. Every Raft timer is a
    # number of ticks, so this scales them all: heartbeats go every
    # heartbeat_tick * tick_interval, elections start after
    # election_tick * tick_interval. A finite number > 0. Default 0.1.
    tick_interval: float = 0.1
    # Ticks without a leader before a follower campaigns (randomised up to
    # twice that); > heartbeat_tick. Default 10 (1 s at the default tick).
    election_tick: int = 10
    # Ticks between the leader's heartbeats; > 0. Default 1.
    heartbeat_tick: int = 1
    # Applied entries between two snapshots of the state machine (after
    # each, the WAL before the snapshot is released). > 0. Default 10,000.
    snapshot_every: int = 10_000
    # Entries kept in the in-memory log behind a snapshot, so a follower
    # that lags by fewer is caught up from the log rather than sent the
    # whole snapshot. >= 0. Default 5,000.
    keep_entries: int = 5_000
    # Append messages in flight per follower (core.Config). > 0. Default 256.
    max_inflight_msgs: int = 256
    # Bytes of entries per append message (core.Config). > 0. Default 1 MiB.
    max_size_per_msg: int = 1 << 20
    # Bytes per snapshot message (core.Config). > 0. Default 1 MiB.
    snapshot_chunk_size: int = 1 << 20
    # Bytes after which the WAL starts a new segment file; whole segments
    # are released once a snapshot covers them. > 0. Default 64 MiB.
    segment_size: int = 64 << 20
    # Snapshot files kept on disk, newest first; at least 2, so the
    # snapshot the WAL's last marker names survives the next one. Default 3.
    keep_snapshots: int = 3
    # Seconds a proposal, a linearizable read or a membership change waits
    # to be committed (or confirmed, or applied) before it fails with
    # Timeout, unless the caller gives its own. A finite number > 0.
    # Default 10.
    proposal_timeout: float = 10.0
    # A learner is promoted to voter once it is within this many entries of
    # the leader's commit index. >= 0. Default 100.
    learner_catchup_lag: int = 100

    def __post_init__(self) -> None:
        from .core import ConfigError, check_int, check_ticks

        for name in ("tick_interval", "proposal_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{name} must be a number of seconds, got {v!r}")
            if not (0 < v < float("inf")):
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {v}")
        check_ticks(self.election_tick, self.heartbeat_tick)
        check_int("snapshot_every", self.snapshot_every, 1, "> 0")
        check_int("keep_entries", self.keep_entries, 0, ">= 0")
        check_int("max_inflight_msgs", self.max_inflight_msgs, 1, "> 0")
        check_int("max_size_per_msg", self.max_size_per_msg, 1, "> 0")
        check_int("snapshot_chunk_size", self.snapshot_chunk_size, 1, "> 0")
        check_int("segment_size", self.segment_size, 1, "> 0")
        check_int("keep_snapshots", self.keep_snapshots, 2, "at least 2")
        check_int("learner_catchup_lag", self.learner_catchup_lag, 0, ">= 0")


@dataclass
class Member:
    node_id: int
    addr: str
    learner: bool = False


@dataclass
class _Pending:
    future: asyncio.Future[Any]
    proposed_at: float


def _wrap_snapshot(members: dict[int, str], sm: bytes) -> bytes:
    return msgpack.packb({"members": members, "sm": sm}, use_bin_type=True)


def _unwrap_snapshot(data: bytes) -> tuple[dict[int, str], bytes]:
    d = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return {int(k): v for k, v in d["members"].items()}, d["sm"]


@dataclass
class _ReadWait:
    future: asyncio.Future[int]
    ctx: bytes


@dataclass
class _ApplyWaiters:
    by_index: dict[int, list[asyncio.Future[None]]] = field(default_factory=dict)


class RaftNode:
    """One manager's Raft replica: persistence, clock, transport, apply."""

    def __init__(
        self,
        node_id: int,
        data_dir: str,
        state_machine: StateMachine,
        *,
        settings: RaftSettings | None = None,
        initial_members: dict[int, str] | None = None,
        ssl_context: Any = None,
        on_leader_change: Callable[[int, int], None] | None = None,
        advertise_addr: str = "",
        probe: Probe = NULL_PROBE,
    ) -> None:
        self.id = node_id
        # Events the daemon's metrics count (proposals, fsyncs, applies).
        self.probe = probe
        self.dir = data_dir
        self.sm = state_machine
        self.settings = settings or RaftSettings()
        self._initial_members = initial_members or {}
        # Called as fn(old, new) from the ready loop when the leader changes;
        # they must not block (the leadership supervisor only signals).
        self._leader_listeners: list[Callable[[int, int], None]] = []
        if on_leader_change is not None:
            self._leader_listeners.append(on_leader_change)
        # Called as fn(index, term, leader) when a term's first entry (the new
        # leader's empty entry) applies; leader is 0 when this node no longer
        # knows who led that term (it is in a later one already).
        self._term_listeners: list[Callable[[int, int, int], None]] = []
        self.members: dict[int, str] = {}
        self._offline = False  # rewriting state on disk: no network
        self._learned: dict[int, str] = {}  # peer addresses from connections, not (yet) from the config
        self.storage = MemoryStorage()
        self.transport = Transport(
            node_id,
            self._on_message,
            self._on_unreachable,
            ssl_context=ssl_context,
            advertise_addr=advertise_addr,
            on_peer_addr=self._on_peer_addr,
        )
        self.node: RawNode | None = None
        self.wal: WAL | None = None
        self.snapshotter = Snapshotter(
            os.path.join(data_dir, "snap"), keep=self.settings.keep_snapshots
        )
        self.applied = 0
        self.conf_state = ConfState()
        self.lead = 0
        self.role = StateRole.FOLLOWER
        self.term = 0
        self._snap_index = 0
        self._seq = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._reads: dict[bytes, _ReadWait] = {}
        self._apply_waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raft-wal")
        self.removed = False
        self.fatal: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------

    def _raft_config(self, applied: int) -> Config:
        s = self.settings
        return Config(
            id=self.id,
            election_tick=s.election_tick,
            heartbeat_tick=s.heartbeat_tick,
            applied=applied,
            max_size_per_msg=s.max_size_per_msg,
            max_inflight_msgs=s.max_inflight_msgs,
            pre_vote=True,
            check_quorum=True,
            snapshot_chunk_size=s.snapshot_chunk_size,
        )

    def open(self) -> None:
        """Recover from disk, or bootstrap a new replica. Synchronous: run it
        before serving anything."""
        wal_dir = os.path.join(self.dir, "wal")
        os.makedirs(self.dir, exist_ok=True)
        if WAL.exists(wal_dir):
            self.wal, _meta, st = WAL.open(wal_dir, segment_size=self.settings.segment_size)
            snap = None
            t0 = time.monotonic()
            if st.snapshot is not None and st.snapshot.index > 0:
                snap = self.snapshotter.load(st.snapshot.index, st.snapshot.term)
            if snap is not None:
                self.storage.apply_snapshot(snap)
                self._restore_snapshot(snap)
                log.info("raft %d: restored snapshot at %d (%d bytes) in %.3f s", self.id, snap.meta.index,
                         len(snap.data), time.monotonic() - t0)
            self.storage.set_hard_state(st.hard_state)
            if st.entries:
                self.storage.append(st.entries)
            self.term = st.hard_state.term
            log.info(
                "raft %d: recovered term=%d commit=%d snapshot=%d entries=%d",
                self.id, st.hard_state.term, st.hard_state.commit,
                self._snap_index, len(st.entries),
            )
        else:
            self.wal = WAL.create(
                wal_dir,
                msgpack.packb({"node_id": self.id}),
                segment_size=self.settings.segment_size,
            )
            if self._initial_members:
                # A new cluster starts from a common snapshot at index 1 that
                # names the initial voters, so every founding member begins
                # with the same configuration and nothing to replay.
                meta = SnapshotMeta(
                    index=1, term=1, conf_state=ConfState(voters=sorted(self._initial_members))
                )
                snap = Snapshot(meta, _wrap_snapshot(self._initial_members, self.sm.snapshot()))
                self.snapshotter.save(snap)
                self.wal.save_snapshot(meta)
                hs = HardState(term=1, vote=0, commit=1)
                self.wal.save(hs, [], sync=True)
                self.storage.apply_snapshot(snap)
                self.storage.set_hard_state(hs)
                self._restore_snapshot(snap)
                self.term = 1
        self.wal.on_fsync = self.probe.wal_fsync
        self.node = RawNode(self._raft_config(self.applied), self.storage)

    def rewrite_as_single_member(self) -> int:
        """Recovery from a lost quorum (`--force-new-cluster`): keep every
        committed entry and make this replica the only voter.

        Committed entries are applied to the state machine, which is saved as
        a snapshot at the commit index naming only this member; the log and
        its uncommitted tail are replaced by a new WAL starting at that
        snapshot, with the term kept so nothing committed can be outvoted.
        Offline: run on a replica that is not started. Returns the index."""
        self._offline = True
        self.open()
        assert self.node is not None and self.wal is not None
        hs, _ = self.storage.initial_state()
        commit = hs.commit
        lo = self.applied + 1
        if commit >= lo:
            for e in self.storage.entries(lo, commit + 1):
                self._apply(e)
        term = self.storage.term(commit) if commit else 0
        members = {self.id: self.transport.advertise_addr}
        meta = SnapshotMeta(index=commit, term=term, conf_state=ConfState(voters=[self.id]))
        snap = Snapshot(meta, _wrap_snapshot(members, self.sm.snapshot()))
        wal_dir = os.path.join(self.dir, "wal")
        self.wal.close()
        self.snapshotter.save(snap)
        old = wal_dir + ".before-force-new-cluster"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(wal_dir, old)
        wal = WAL.create(wal_dir, msgpack.packb({"node_id": self.id}), segment_size=self.settings.segment_size)
        wal.save_snapshot(meta)
        wal.save(HardState(term=hs.term, vote=0, commit=commit), [], sync=True)
        wal.close()
        shutil.rmtree(old, ignore_errors=True)
        log.warning("raft %d: forced a new single-member cluster at index %d (term %d)", self.id, commit, hs.term)
        return commit

    async def start(self) -> None:
        if self.node is None:
            self.open()
        self._set_peers()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ticker(), name=f"raft-tick-{self.id}"),
            loop.create_task(self._run(), name=f"raft-run-{self.id}"),
        ]

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except BaseException:
                pass
        await self.transport.close()
        self._io.shutdown(wait=True)
        if self.wal is not None:
            self.wal.close()
            self.wal = None
        err = Stopped("raft node stopped")
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(err)
        for r in self._reads.values():
            if not r.future.done():
                r.future.set_exception(err)
        for ws in self._apply_waiters.values():
            for f in ws:
                if not f.done():
                    f.set_exception(err)
        self._pending.clear()
        self._reads.clear()
        self._apply_waiters.clear()

    # -- public operations ---------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == StateRole.LEADER

    async def propose(self, payload: bytes, *, timeout: float | None = None) -> Any:
        """Replicate `payload`; return what the state machine's apply returned
        for it on this node."""
        self._check_running()
        if self.lead == 0:
            # An election is under way (or this node just lost touch with the
            # leader): wait for one, as long as an election takes, rather than
            # fail a write that would succeed a moment later.
            s = self.settings
            deadline = time.monotonic() + 2 * s.election_tick * s.tick_interval
            while self.lead == 0:
                if time.monotonic() >= deadline:
                    raise NoLeader("no leader elected yet; retry shortly")
                await asyncio.sleep(s.tick_interval)
                self._check_running()
        seq = next(self._seq)
        data = msgpack.packb([self.id, seq, payload], use_bin_type=True)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        assert self.node is not None
        try:
            self.node.propose(data)
        except ProposalDropped as e:
            raise NoLeader(f"proposal dropped: {e}") from None
        t0 = time.monotonic()
        self._pending[seq] = _Pending(fut, t0)
        self._wake.set()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a
            # cancellation that arrives as the future completes, and a
            # step-down waiting on this call would then never end.
            async with asyncio.timeout(timeout or self.settings.proposal_timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise Timeout(
                "the write was not committed in time (leader change or lost quorum); "
                "it may or may not take effect"
            ) from None
        finally:
            self._pending.pop(seq, None)
            self.probe.raft_proposal(time.monotonic() - t0, fut.done() and not fut.cancelled()
                                     and fut.exception() is None)

    async def read_barrier(self, *, timeout: float | None = None) -> int:
        """Wait until this replica has applied everything committed before the
        call (ReadIndex); a read of local state after this is linearizable.

        A ReadIndex request is dropped by a node without a leader (or lost
        with a leader that dies), so it is re-sent each election timeout
        until it is confirmed: a read during failover answers as soon as
        the new leader does."""
        self._check_running()
        assert self.node is not None
        t = timeout or self.settings.proposal_timeout
        deadline = time.monotonic() + t
        retry = self.settings.tick_interval * self.settings.election_tick
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout("read index not confirmed by a quorum in time")
            if self.lead == 0:
                await asyncio.sleep(min(self.settings.tick_interval, remaining))
                self._check_running()
                continue
            ctx = msgpack.packb([self.id, next(self._seq)])
            fut: asyncio.Future[int] = loop.create_future()
            self._reads[ctx] = _ReadWait(fut, ctx)
            self.node.read_index(ctx)
            self._wake.set()
            try:
                async with asyncio.timeout(min(retry, remaining)):  # (not wait_for: see propose)
                    index = await asyncio.shield(fut)
                break
            except TimeoutError:
                continue
            finally:
                self._reads.pop(ctx, None)
        await self.wait_applied(index, timeout=max(0.0, deadline - time.monotonic()))
        return index

    async def wait_applied(self, index: int, *, timeout: float | None = None) -> None:
        if self.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._apply_waiters.setdefault(index, []).append(fut)
        try:
            async with asyncio.timeout(timeout):  # (not wait_for: see propose)
                await fut
        except TimeoutError:
            raise Timeout(f"index {index} not applied in time (applied {self.applied})") from None

    async def add_member(self, node_id: int, addr: str, *, timeout: float = 30.0) -> None:
        """Add a manager: first as a learner, then as a voter once caught up."""
        if node_id in self.conf_state.voters:
            raise RaftError(f"node {node_id} is already a voter")
        deadline = time.monotonic() + timeout
        if node_id not in self.conf_state.learners:
            await self._propose_conf(ConfChange(ConfChangeType.ADD_LEARNER, node_id, addr.encode()))
        while True:
            st = self.status_raw()
            pr = st.progress.get(node_id) if st.progress else None
            if pr is not None and pr.match + self.settings.learner_catchup_lag >= st.commit:
                break
            if time.monotonic() > deadline:
                raise Timeout(f"learner {node_id} did not catch up in {timeout:.0f}s")
            await asyncio.sleep(self.settings.tick_interval)
        await self._propose_conf(ConfChange(ConfChangeType.ADD_VOTER, node_id, addr.encode()))

    async def remove_member(self, node_id: int) -> None:
        if node_id not in self.conf_state.voters and node_id not in self.conf_state.learners:
            raise RaftError(f"node {node_id} is not a member")
        await self._propose_conf(ConfChange(ConfChangeType.REMOVE_NODE, node_id))

    async def transfer_leadership(self, to: int, *, timeout: float = 5.0) -> None:
        self._check_running()
        assert self.node is not None
        if not self.is_leader:
            raise NotLeader(self.lead, "only the leader can transfer leadership")
        self.node.transfer_leader(to)
        self._wake.set()
        deadline = time.monotonic() + timeout
        while self.lead != to:
            if time.monotonic() > deadline:
                raise Timeout(f"leadership did not move to {to} in {timeout:.0f}s")
            await asyncio.sleep(self.settings.tick_interval / 2)

    async def campaign(self) -> None:
        assert self.node is not None
        self.node.campaign()
        self._wake.set()

    def status_raw(self) -> Any:
        assert self.node is not None
        return self.node.status()

    def status(self) -> dict[str, Any]:
        st = self.status_raw()
        peers = self.transport.peer_stats()
        members = []
        for nid in sorted(set(self.conf_state.voters) | set(self.conf_state.learners)):
            entry: dict[str, Any] = {
                "id": nid,
                "addr": self.members.get(nid, ""),
                "suffrage": "learner" if nid in self.conf_state.learners else "voter",
                "leader": nid == self.lead,
            }
            if nid == self.id:
                entry["reachable"] = True
            else:
                ps = peers.get(nid)
                entry["reachable"] = bool(ps and ps.connected)
            if st.progress and nid in st.progress:
                entry["match"] = st.progress[nid].match
            members.append(entry)
        return {
            "id": self.id,
            "leader": self.lead,
            "role": StateRole(self.role).name.lower(),
            "term": st.term,
            "commit": st.commit,
            "applied": self.applied,
            "snapshot_index": self._snap_index,
            "members": members,
        }

    # -- internals -------------------------------------------------------------

    def add_leader_listener(self, fn: Callable[[int, int], None]) -> None:
        """Call `fn(old, new)` (Raft ids, 0 = none) whenever the leader this
        node knows of changes; this node leads iff new == self.id. It runs
        inside the ready loop: it must return at once, never block."""
        self._leader_listeners.append(fn)

    def remove_leader_listener(self, fn: Callable[[int, int], None]) -> None:
        if fn in self._leader_listeners:
            self._leader_listeners.remove(fn)

    def _notify_leader_change(self, old: int, new: int) -> None:
        for fn in list(self._leader_listeners):
            try:
                fn(old, new)
            except Exception:  # a listener's bug must not stop the node (the ready loop treats errors as fatal)
                log.exception("raft %d: leader listener %r failed", self.id, fn)

    def add_term_listener(self, fn: Callable[[int, int, int], None]) -> None:
        """Call `fn(index, term, leader)` as each term's first entry applies:
        the same entries on every replica, so a history of leader changes
        keyed by Raft index. It runs inside the ready loop: never block."""
        self._term_listeners.append(fn)

    def remove_term_listener(self, fn: Callable[[int, int, int], None]) -> None:
        if fn in self._term_listeners:
            self._term_listeners.remove(fn)

    def _notify_term_start(self, e: Entry) -> None:
        lead = self.lead if e.term == self.term else 0
        for fn in list(self._term_listeners):
            try:
                fn(e.index, e.term, lead)
            except Exception:  # as for leader listeners: never stop the node
                log.exception("raft %d: term listener %r failed", self.id, fn)

    def _check_running(self) -> None:
        if self._stopped or self.fatal is not None:
            raise Stopped(f"raft node is stopped{': ' + str(self.fatal) if self.fatal else ''}")
        if self.removed:
            raise Stopped("this manager was removed from the cluster")

    async def _propose_conf(self, cc: ConfChange) -> None:
        self._check_running()
        assert self.node is not None
        if not self.is_leader:
            raise NotLeader(self.lead, "membership changes must be made on the leader")
        target = self.applied
        try:
            self.node.propose_conf_change(cc)
        except ProposalDropped as e:
            raise RaftError(f"membership change refused: {e}") from None
        self._wake.set()
        # Wait until the change is applied: the conf state shows it.
        deadline = time.monotonic() + self.settings.proposal_timeout
        while True:
            await asyncio.sleep(self.settings.tick_interval / 4)
            cs = self.conf_state
            if cc.type == ConfChangeType.ADD_LEARNER and cc.node_id in cs.learners:
                return
            if cc.type == ConfChangeType.ADD_VOTER and cc.node_id in cs.voters:
                return
            if cc.type == ConfChangeType.REMOVE_NODE and (
                cc.node_id not in cs.voters and cc.node_id not in cs.learners
            ):
                return
            if time.monotonic() > deadline:
                raise Timeout(f"membership change not applied in time (applied {self.applied}, from {target})")

    def _on_message(self, m: Message) -> None:
        if self.node is None or self._stopped:
            return
        try:
            self.node.step(m)
        except Exception as e:  # a bad message must never stop the replica
            log.warning("raft %d: dropped message %s from %d: %s", self.id, m.type.name, m.frm, e)
            return
        self._wake.set()

    def _on_peer_addr(self, node_id: int, addr: str) -> None:
        # Addresses come from the replicated configuration; a peer that the
        # configuration does not name yet (the leader of a manager being
        # added, whose snapshot may predate that leader) is answered at the
        # address it connected with until the configuration catches up.
        if node_id != self.id and node_id not in self.members and self._learned.get(node_id) != addr:
            self._learned[node_id] = addr
            self._set_peers()

    def _set_peers(self) -> None:
        if self._offline:
            return
        for nid in [n for n in self._learned if n in self.members]:
            del self._learned[nid]
        self.transport.set_peers({**self._learned, **self.members})

    def _on_unreachable(self, node_id: int) -> None:
        if self.node is not None and not self._stopped:
            self.node.report_unreachable(node_id)

    async def _ticker(self) -> None:
        interval = self.settings.tick_interval
        nxt = time.monotonic()
        while not self._stopped:
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if self.node is None:
                continue
            self.node.tick()
            self._wake.set()

    async def _run(self) -> None:
        try:
            while not self._stopped:
                await self._wake.wait()
                self._wake.clear()
                # Yield once so that requests arriving in the same loop
                # iteration join this batch (group commit).
                await asyncio.sleep(0)
                assert self.node is not None
                while self.node.has_ready():
                    await self._handle_ready()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            # Persistence failure or a broken invariant: stop serving rather
            # than acknowledge anything we could not make durable.
            log.critical("raft %d: fatal: %s", self.id, e, exc_info=True)
            self.fatal = e
            self._stopped = True

    async def _handle_ready(self) -> None:
        node = self.node
        assert node is not None and self.wal is not None
        rd = node.ready()
        if rd.soft_state is not None:
            old = self.lead
            self.lead = rd.soft_state.lead
            self.role = rd.soft_state.role
            if old != self.lead:
                log.info("raft %d: leader is now %d", self.id, self.lead)
                self.probe.raft_leader_change()
                self._notify_leader_change(old, self.lead)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self.snapshotter.save(rd.snapshot)
            self.wal.save_snapshot(rd.snapshot.meta)
            self.storage.apply_snapshot(rd.snapshot)
        # A leader may replicate its new entries while it writes them itself
        # (Raft thesis 10.2.1): its own copy counts toward commit, but commit
        # news and client answers only leave in a later batch, after this
        # fsync. Everything else (votes, acks) waits for the disk.
        early = self.role == StateRole.LEADER and all(m.type in _LEADER_EARLY for m in rd.messages)
        if early and rd.messages:
            self.transport.send(rd.messages)
        if rd.hard_state is not None or rd.entries:
            await asyncio.get_running_loop().run_in_executor(
                self._io, self._save, rd.hard_state, rd.entries, rd.must_sync or bool(rd.entries)
            )
            if rd.hard_state is not None:
                self.storage.set_hard_state(rd.hard_state)
                self.term = rd.hard_state.term
            if rd.entries:
                self.storage.append(rd.entries)
        if rd.messages and not early:
            self.transport.send(rd.messages)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self._restore_snapshot(rd.snapshot)
        for e in rd.committed_entries:
            self._apply(e)
        for rs in rd.read_states:
            w = self._reads.get(rs.request_ctx)
            if w is not None and not w.future.done():
                w.future.set_result(rs.index)
        node.advance(rd)
        self._wake_appliers()
        self._maybe_compact()

    def _save(self, hs: HardState | None, entries: list[Entry], sync: bool) -> None:
        assert self.wal is not None
        self.wal.save(hs, entries, sync=sync)

    def _restore_snapshot(self, snap: Snapshot) -> None:
        members, sm_data = _unwrap_snapshot(snap.data)
        self.sm.restore(sm_data)
        self.members = members
        self.conf_state = ConfState(
            list(snap.meta.conf_state.voters), list(snap.meta.conf_state.learners)
        )
        self.applied = snap.meta.index
        self._snap_index = snap.meta.index
        if self.node is not None:
            self._set_peers()

    def _apply(self, e: Entry) -> None:
        if e.index <= self.applied:
            return
        if e.type == EntryType.CONF_CHANGE:
            self._apply_conf_change(e)
        elif not e.data:
            self.sm.apply_noop(e.index)
            if self._term_listeners:
                self._notify_term_start(e)
        else:
            try:
                origin, seq, payload = msgpack.unpackb(e.data, raw=False)
            except Exception:
                log.error("raft %d: entry %d has no envelope; skipped", self.id, e.index)
                self.sm.apply_noop(e.index)
            else:
                t0 = time.perf_counter()
                result = self.sm.apply(e.index, payload)
                self.probe.store_transaction(time.perf_counter() - t0, getattr(result, "ok", True))
                if origin == self.id:
                    p = self._pending.get(seq)
                    if p is not None and not p.future.done():
                        p.future.set_result(result)
        self.applied = e.index

    def _apply_conf_change(self, e: Entry) -> None:
        assert self.node is not None
        cc = ConfChange.decode(e.data)
        self.conf_state = self.node.apply_conf_change(cc)
        if cc.type == ConfChangeType.REMOVE_NODE:
            self.members.pop(cc.node_id, None)
            if cc.node_id == self.id:
                log.warning("raft %d: removed from the cluster", self.id)
                self.removed = True
        elif cc.context:
            self.members[cc.node_id] = cc.context.decode()
        self._set_peers()
        self.sm.apply_noop(e.index)

    def _wake_appliers(self) -> None:
        if not self._apply_waiters:
            return
        for idx in [i for i in self._apply_waiters if i <= self.applied]:
            for f in self._apply_waiters.pop(idx):
                if not f.done():
                    f.set_result(None)

    def _maybe_compact(self) -> None:
        s = self.settings
        if self.applied - self._snap_index < s.snapshot_every:
            return
        assert self.wal is not None
        t0 = time.monotonic()
        data = _wrap_snapshot(self.members, self.sm.snapshot())
        snap = self.storage.create_snapshot(self.applied, self.conf_state, data)
        self.snapshotter.save(snap)
        self.wal.save_snapshot(snap.meta)
        took = time.monotonic() - t0
        self._snap_index = snap.meta.index
        compact_to = self.applied - s.keep_entries
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)
        self.wal.release_to(snap.meta.index)
        log.info("raft %d: snapshot at %d (%d bytes) written in %.3f s, log compacted to %d", self.id,
                 snap.meta.index, len(data), took, compact_to)
