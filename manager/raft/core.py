"""The Raft algorithm as a pure state machine, in the shape of etcd-io/raft.

No sockets, files or clocks: callers feed messages (`step`) and clock ticks
(`tick`), then collect a `Ready` batch (messages to send, entries and hard
state to persist, committed entries to apply) and call `advance`.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field

from .log import RaftLog
from .storage import Compacted, SnapshotTemporarilyUnavailable, Storage
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Snapshot,
    SoftState,
    StateRole,
)

MT = MessageType
TRANSFER_CTX = b"transfer"


class RaftError(Exception):
    pass


class ProposalDropped(RaftError):
    pass


class StepError(RaftError):
    pass


class ConfigError(ValueError):
    """A Raft setting out of its range; the message names the field, the
    rule and the value given."""


def check_int(name: str, v: object, minimum: int, rule: str) -> None:
    """`name` must be an int >= `minimum` (`rule` says so in words)."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if v < minimum:
        raise ConfigError(f"{name} must be {rule}, got {v}")


def _check_bool(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {v!r}")


@dataclass
class Config:
    """Settings of one Raft replica (what etcd-io/raft calls Config).

    Time is counted in ticks: the core has no clock, its driver calls
    `tick()` at a fixed interval (`RaftSettings.tick_interval`, 100 ms by
    default), so 10 ticks are one second there. Sizes are bytes. Every field
    is checked when the Config is made (`validate`); a bad one raises
    ConfigError naming it.
    """

    # This replica's id in the group: an integer > 0 (0 means "no node" in
    # messages and votes). Required.
    id: int
    # Ticks a follower waits without hearing from a leader before it starts
    # an election. The actual timeout is drawn at random from
    # [election_tick, 2 * election_tick) each term so candidates rarely
    # collide. With check_quorum, also how long a leader keeps leading
    # without hearing from a quorum, and how long a follower ignores vote
    # requests after its leader was last heard of. Must be greater than
    # heartbeat_tick; about 10x heartbeat_tick is usual. Default 10.
    election_tick: int = 10
    # Ticks between the leader's heartbeats to each follower. Must be > 0.
    # Default 1.
    heartbeat_tick: int = 1
    # Index of the last entry the state machine applied before a restart;
    # entries up to it are not handed out for applying again. 0 (default)
    # on a fresh replica; >= 0, and at most the stored commit index (checked
    # when the log is loaded).
    applied: int = 0
    # Upper bound, in bytes, of the entries of one append message (entry
    # data plus 24 bytes of bookkeeping each). An entry larger than this
    # still goes, alone. Lower means cheaper retries after a lost message,
    # higher means faster catch-up. Must be > 0. Default 1 MiB.
    max_size_per_msg: int = 1 << 20
    # Append messages a leader keeps in flight, unacknowledged, to one
    # follower while replicating (a pipelining window). Must be > 0.
    # Default 256.
    max_inflight_msgs: int = 256
    # Bytes of entry data the leader accepts into its log while uncommitted;
    # past it, proposals are dropped until entries commit (one proposal is
    # always accepted, however large). Protects memory while a quorum is
    # unreachable. 0 (default) = no limit; must be >= 0.
    max_uncommitted_entries_size: int = 0
    # Pre-vote (Raft thesis 9.6): a candidate first asks whether it could
    # win before raising its term, so a node that was cut off cannot depose
    # a healthy leader when it comes back. Default on.
    pre_vote: bool = True
    # The leader steps down when it has not heard from a quorum for
    # election_tick ticks, and followers that hear from a leader ignore
    # vote requests (leader lease). Default on.
    check_quorum: bool = True
    # Followers drop proposals (ProposalDropped) instead of forwarding them
    # to the leader. Default off.
    disable_proposal_forwarding: bool = False
    # Bytes of snapshot data per snapshot message: a large snapshot goes to
    # a follower in chunks of this size. Must be > 0. Default 1 MiB.
    snapshot_chunk_size: int = 1 << 20
    # Seed of the random election timeouts; None (default) uses the id, so
    # runs are reproducible. Set it in simulations to vary the schedule.
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for the first field out of its range."""
        if not isinstance(self.id, int) or isinstance(self.id, bool):
            raise ConfigError(f"id must be an integer, got {self.id!r}")
        if self.id == NONE:
            raise ConfigError("id must be non-zero (0 means no node)")
        if self.id < 0:
            raise ConfigError(f"id must be > 0, got {self.id}")
        check_ticks(self.election_tick, self.heartbeat_tick)
        check_int("applied", self.applied, 0, ">= 0")
        check_int("max_size_per_msg", self.max_size_per_msg, 1, "> 0")
        check_int("max_inflight_msgs", self.max_inflight_msgs, 1, "> 0")
        check_int("max_uncommitted_entries_size", self.max_uncommitted_entries_size, 0, ">= 0 (0 = no limit)")
        _check_bool("pre_vote", self.pre_vote)
        _check_bool("check_quorum", self.check_quorum)
        _check_bool("disable_proposal_forwarding", self.disable_proposal_forwarding)
        check_int("snapshot_chunk_size", self.snapshot_chunk_size, 1, "> 0")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ConfigError(f"seed must be an integer or None, got {self.seed!r}")


def check_ticks(election_tick: int, heartbeat_tick: int) -> None:
    """The rules between the two timers, shared with the driver's settings."""
    check_int("heartbeat_tick", heartbeat_tick, 1, "> 0")
    check_int("election_tick", election_tick, 1, "> 0")
    if election_tick <= heartbeat_tick:
        raise ConfigError(
            f"election_tick ({election_tick}) must be greater than heartbeat_tick ({heartbeat_tick})"
        )


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    """The leader's view of one follower."""

    __slots__ = (
        "match", "next", "state", "probe_sent", "pending_snapshot", "recent_active",
        "inflights", "max_inflight", "is_learner", "snap", "snap_offset",
    )

    def __init__(self, next_: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.inflights: deque[int] = deque()
        self.max_inflight = max_inflight
        self.is_learner = is_learner
        self.snap: Snapshot | None = None
        self.snap_offset = 0

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.clear()
        self.snap = None
        self.snap_offset = 0

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            ps = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, ps + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snap: Snapshot) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snap.meta.index
        self.snap = snap

    def maybe_update(self, n: int) -> bool:
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def inflights_full(self) -> bool:
        return len(self.inflights) >= self.max_inflight

    def free_le(self, index: int) -> None:
        q = self.inflights
        while q and q[0] <= index:
            q.popleft()

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights_full()
        return True


@dataclass
class ProgressStatus:
    match: int
    next: int
    state: str
    recent_active: bool
    is_learner: bool


@dataclass
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    lead: int
    role: StateRole
    voters: list[int] = field(default_factory=list)
    learners: list[int] = field(default_factory=list)
    progress: dict[int, ProgressStatus] = field(default_factory=dict)
    lead_transferee: int = NONE


@dataclass
class _ReadReq:
    ctx: bytes
    index: int
    frm: int
    acks: set[int]


class Raft:
    def __init__(self, c: Config, storage: Storage) -> None:
        c.validate()  # again: a Config is mutable
        self.id = c.id
        self.cfg = c
        self.rng = random.Random(c.seed if c.seed is not None else c.id)
        self.log = RaftLog(storage)
        hs, cs = storage.initial_state()
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = StateRole.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_queue: list[_ReadReq] = []
        self.reads_waiting_commit: list[Message] = []
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = c.election_tick
        # Proposals and commit advances between two Ready batches are sent as
        # one append per follower when the batch is taken (proposal batching).
        self.bcast_pending = False
        self._snap_in: tuple[int, int] | None = None  # (index, term) being assembled
        self._snap_buf = bytearray()
        self._apply_conf_state(cs)
        if not hs.is_empty():
            if hs.commit < self.log.committed or hs.commit > self.log.last_index():
                raise RaftError(
                    f"hard state commit {hs.commit} out of range "
                    f"[{self.log.committed}, {self.log.last_index()}]"
                )
            self.log.committed = hs.commit
            self.term = hs.term
            self.vote = hs.vote
        if c.applied > 0:
            self.log.applied_to(c.applied)
        self.become_follower(self.term, NONE)

    # -- configuration -------------------------------------------------------

    def _apply_conf_state(self, cs: ConfState) -> None:
        nxt = self.log.last_index() + 1
        self.prs = {}
        for v in cs.voters:
            self.prs[v] = Progress(nxt, self.cfg.max_inflight_msgs)
        for lr in cs.learners:
            self.prs[lr] = Progress(nxt, self.cfg.max_inflight_msgs, is_learner=True)

    def conf_state(self) -> ConfState:
        return ConfState(
            sorted(i for i, p in self.prs.items() if not p.is_learner),
            sorted(i for i, p in self.prs.items() if p.is_learner),
        )

    def voters(self) -> list[int]:
        return [i for i, p in self.prs.items() if not p.is_learner]

    def quorum(self) -> int:
        return len(self.voters()) // 2 + 1

    def promotable(self) -> bool:
        p = self.prs.get(self.id)
        return p is not None and not p.is_learner

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    # -- state transitions -----------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self.rng.randrange(
            self.cfg.election_tick
        )
        self.lead_transferee = NONE
        self.votes = {}
        self.read_queue = []
        last = self.log.last_index()
        for nid, p in self.prs.items():
            np_ = Progress(last + 1, self.cfg.max_inflight_msgs, p.is_learner)
            if nid == self.id:
                np_.match = last
            self.prs[nid] = np_
        self.pending_conf_index = 0
        self.uncommitted_size = 0

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = StateRole.FOLLOWER

    def become_candidate(self) -> None:
        if self.role == StateRole.LEADER:
            raise RaftError("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = StateRole.CANDIDATE

    def become_pre_candidate(self) -> None:
        if self.role == StateRole.LEADER:
            raise RaftError("leader cannot become pre-candidate")
        # Pre-vote changes neither term nor vote.
        self.votes = {}
        self.lead = NONE
        self.role = StateRole.PRE_CANDIDATE

    def become_leader(self) -> None:
        if self.role == StateRole.FOLLOWER:
            raise RaftError("follower cannot become leader")
        self._reset(self.term)
        self.lead = self.id
        self.role = StateRole.LEADER
        for p in self.prs.values():
            p.recent_active = True
        me = self.prs.get(self.id)
        if me is not None:
            me.become_replicate()
        # Conf changes already in the log may be pending; be conservative.
        self.pending_conf_index = self.log.last_index()
        self._append_entries([Entry(0, 0)])

    # -- clock -------------------------------------------------------------

    def tick(self) -> None:
        if self.role == StateRole.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            if self.role == StateRole.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer timed out
        if self.role != StateRole.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    # -- sending -------------------------------------------------------------

    def _send(self, m: Message) -> None:
        m.frm = self.id
        if m.type in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            if m.term == 0:
                raise RaftError(f"term must be set for {m.type.name}")
        elif m.type != MT.PROP and m.type != MT.READ_INDEX:
            m.term = self.term
        self.msgs.append(m)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs.get(to)
        if pr is None or pr.is_paused():
            return False
        last = self.log.last_index()
        try:
            prev_term = self.log.term(pr.next - 1)
            ents = self.log.slice(pr.next, last + 1, self.cfg.max_size_per_msg)
        except Compacted:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        m = Message(MT.APP, to=to, index=pr.next - 1, log_term=prev_term, entries=ents,
                    commit=self.log.committed)
        if ents:
            if pr.state == ProgressState.REPLICATE:
                li = ents[-1].index
                pr.next = li + 1
                pr.inflights.append(li)
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        self._send(m)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty():
            raise RaftError("need a non-empty snapshot to send")
        pr.become_snapshot(snap)
        self._send_snap_chunk(to, pr)
        return True

    def _send_snap_chunk(self, to: int, pr: Progress) -> None:
        snap = pr.snap
        if snap is None:
            return
        off = pr.snap_offset
        chunk = snap.data[off : off + self.cfg.snapshot_chunk_size]
        last = off + len(chunk) >= len(snap.data)
        self._send(Message(MT.SNAP, to=to, snapshot=Snapshot(snap.meta, chunk),
                           chunk_offset=off, chunk_last=last, index=snap.meta.index))

    def _send_heartbeat(self, to: int, ctx: bytes) -> None:
        pr = self.prs[to]
        commit = min(pr.match, self.log.committed)
        self._send(Message(MT.HEARTBEAT, to=to, commit=commit, context=ctx))

    def flush_bcast(self) -> None:
        if self.bcast_pending:
            self.bcast_pending = False
            if self.role == StateRole.LEADER:
                self.bcast_append()

    def bcast_append(self) -> None:
        for nid in self.prs:
            if nid != self.id:
                self._send_append(nid)

    def bcast_heartbeat(self, ctx: bytes = b"") -> None:
        for nid in self.prs:
            if nid != self.id:
                self._send_heartbeat(nid, ctx)

    # -- log ---------------------------------------------------------------

    def _append_entries(self, es: list[Entry]) -> bool:
        li = self.log.last_index()
        size = sum(len(e.data) for e in es)
        lim = self.cfg.max_uncommitted_entries_size
        if lim and self.uncommitted_size > 0 and self.uncommitted_size + size > lim:
            return False
        self.uncommitted_size += size
        for i, e in enumerate(es):
            e.term = self.term
            e.index = li + 1 + i
        li = self.log.append(es)
        me = self.prs.get(self.id)
        if me is not None:
            me.maybe_update(li)
        self.maybe_commit()
        return True

    def maybe_commit(self) -> bool:
        matches = sorted((p.match for p in self.prs.values() if not p.is_learner), reverse=True)
        if not matches:
            return False
        mci = matches[self.quorum() - 1]
        if mci > self.log.committed and self.log.match_term(mci, self.term):
            # Only entries of the current term commit by counting replicas.
            self.log.commit_to(mci)
            self.uncommitted_size = 0
            return True
        return False

    def committed_in_current_term(self) -> bool:
        try:
            return self.log.term(self.log.committed) == self.term
        except Compacted:
            return False

    # -- elections -------------------------------------------------------------

    def _has_unapplied_conf(self) -> bool:
        if self.log.committed <= self.log.applied:
            return False
        try:
            ents = self.log.slice(self.log.applied + 1, self.log.committed + 1)
        except Compacted:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in ents)

    def _hup(self, transfer: bool) -> None:
        if self.role == StateRole.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf():
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            vote_type, term = MT.VOTE, self.term
        if self._poll(self.id, True) >= self.quorum():
            if pre:
                self._campaign(pre=False, transfer=False)
            else:
                self.become_leader()
            return
        last = self.log.last_index()
        lt = self.log.last_term()
        for nid in self.voters():
            if nid == self.id:
                continue
            self._send(Message(vote_type, to=nid, term=term, index=last, log_term=lt,
                               context=TRANSFER_CTX if transfer else b""))

    def _poll(self, nid: int, granted: bool) -> int:
        self.votes.setdefault(nid, granted)
        return sum(1 for v, g in self.votes.items() if g and v in self.prs and not self.prs[v].is_learner)

    def _rejections(self) -> int:
        return sum(1 for v, g in self.votes.items() if not g and v in self.prs and not self.prs[v].is_learner)

    # -- step ----------------------------------------------------------------

    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == TRANSFER_CTX
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.cfg.election_tick
                )
                if in_lease and not force:
                    return  # a leader is alive: ignore disruptive candidates
            if m.type == MT.PRE_VOTE:
                pass  # never change term on a pre-vote request
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # our term moves only when the real election starts
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # Tell a stale leader about the newer term so it steps down.
                self._send(Message(MT.APP_RESP, to=m.frm))
            elif m.type == MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        t = m.type
        if t == MT.HUP:
            self._hup(transfer=False)
            return
        if t in (MT.VOTE, MT.PRE_VOTE):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t == MT.PRE_VOTE and m.term > self.term)
            )
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                resp = MT.VOTE_RESP if t == MT.VOTE else MT.PRE_VOTE_RESP
                self._send(Message(resp, to=m.frm, term=m.term))
                if t == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                resp = MT.VOTE_RESP if t == MT.VOTE else MT.PRE_VOTE_RESP
                self._send(Message(resp, to=m.frm, term=self.term, reject=True))
            return
        if self.role == StateRole.LEADER:
            self._step_leader(m)
        elif self.role in (StateRole.CANDIDATE, StateRole.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self.bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            active = 0
            for nid, p in self.prs.items():
                if p.is_learner:
                    continue
                if nid == self.id or p.recent_active:
                    active += 1
            if active < self.quorum():
                self.become_follower(self.term, NONE)
                return
            for nid, p in self.prs.items():
                if nid != self.id:
                    p.recent_active = False
            return
        if t == MT.PROP:
            if not m.entries:
                raise StepError("empty proposal")
            if self.id not in self.prs:
                raise ProposalDropped("this node was removed from the cluster")
            if self.lead_transferee != NONE:
                raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
            for e in m.entries:
                if e.type == EntryType.CONF_CHANGE:
                    if self.pending_conf_index > self.log.applied:
                        raise ProposalDropped("another membership change is still pending")
                    self.pending_conf_index = self.log.last_index() + 1
            if not self._append_entries([Entry(0, 0, e.type, e.data) for e in m.entries]):
                raise ProposalDropped("too many uncommitted entries")
            self.bcast_pending = True
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m)
            return
        if t == MT.TRANSFER_LEADER:
            self._transfer_leader(m.frm)
            return

        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == ProgressState.REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm)
                return
            old_paused = pr.is_paused()
            if pr.maybe_update(m.index):
                if pr.state == ProgressState.PROBE:
                    pr.become_replicate()
                elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.state == ProgressState.REPLICATE:
                    pr.free_le(m.index)
                if self.maybe_commit():
                    self.bcast_pending = True
                    self._release_waiting_reads()
                elif old_paused:
                    self._send_append(m.frm)
                # Pipeline: keep sending while the window has room.
                while self._send_append(m.frm, send_if_empty=False):
                    pass
                if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                    self._send(Message(MT.TIMEOUT_NOW, to=m.frm))
            return
        if t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights_full():
                pr.inflights.popleft()
            if pr.state == ProgressState.SNAPSHOT:
                self._send_snap_chunk(m.frm, pr)  # resend a possibly lost chunk
            elif pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._read_ack(m.frm, m.context)
            return
        if t == MT.SNAP_RESP:
            pr.recent_active = True
            if pr.state != ProgressState.SNAPSHOT or m.index != pr.pending_snapshot:
                return
            if m.reject:
                pr.snap_offset = 0
                self._send_snap_chunk(m.frm, pr)
            elif m.chunk_offset > pr.snap_offset:
                pr.snap_offset = m.chunk_offset
                self._send_snap_chunk(m.frm, pr)
            return
        if t == MT.SNAP_STATUS:
            if pr.state == ProgressState.SNAPSHOT:
                if m.reject:
                    pr.pending_snapshot = 0
                pr.become_probe()
                pr.probe_sent = True
            return
        if t == MT.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            return

    def _transfer_leader(self, transferee: int) -> None:
        pr = self.prs.get(transferee)
        if pr is None or pr.is_learner or transferee == self.id:
            return
        if self.lead_transferee == transferee:
            return
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=transferee))
        else:
            self._send_append(transferee)

    def _leader_read_index(self, m: Message) -> None:
        ctx = m.entries[0].data if m.entries else m.context
        if len(self.voters()) == 1:
            self._respond_read(m.frm, ctx, self.log.committed)
            return
        if not self.committed_in_current_term():
            self.reads_waiting_commit.append(m)
            return
        req = _ReadReq(ctx, self.log.committed, m.frm, {self.id})
        self.read_queue.append(req)
        self.bcast_heartbeat(ctx)

    def _release_waiting_reads(self) -> None:
        if self.reads_waiting_commit and self.committed_in_current_term():
            waiting, self.reads_waiting_commit = self.reads_waiting_commit, []
            for m in waiting:
                self._leader_read_index(m)

    def _read_ack(self, frm: int, ctx: bytes) -> None:
        for i, req in enumerate(self.read_queue):
            if req.ctx == ctx:
                req.acks.add(frm)
                voters = set(self.voters())
                if len(req.acks & voters) >= self.quorum():
                    done, self.read_queue = self.read_queue[: i + 1], self.read_queue[i + 1 :]
                    for r in done:
                        self._respond_read(r.frm, r.ctx, r.index)
                return

    def _respond_read(self, frm: int, ctx: bytes, index: int) -> None:
        if frm == NONE or frm == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MT.READ_INDEX_RESP, to=frm, index=index, context=ctx))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.role == StateRole.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.PROP:
            raise ProposalDropped("no leader: election in progress")
        if t == MT.READ_INDEX:
            return
        if t in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self.become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        if t == my_resp:
            granted = self._poll(m.frm, not m.reject)
            if granted >= self.quorum():
                if self.role == StateRole.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif self._rejections() >= self.quorum():
                self.become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader known")
            if self.cfg.disable_proposal_forwarding:
                raise ProposalDropped("proposal forwarding is disabled")
            m.to = self.lead
            self._send(m)
            return
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
            return
        if t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))
            return
        if t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snap_chunk(m)
            return
        if t == MT.TRANSFER_LEADER:
            if self.lead != NONE:
                m.to = self.lead
                self._send(m)
            return
        if t == MT.TIMEOUT_NOW:
            if self.promotable():
                self._hup(transfer=True)
            return
        if t == MT.READ_INDEX:
            if self.lead == NONE:
                return
            m.to = self.lead
            self._send(m)
            return
        if t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
            return

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MT.APP_RESP, to=m.frm, index=last_new))
            return
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self._send(Message(MT.APP_RESP, to=m.frm, index=m.index, reject=True,
                           reject_hint=hint_index, log_term=hint_term))

    def _handle_snap_chunk(self, m: Message) -> None:
        s = m.snapshot
        if s is None:
            return
        key = (s.meta.index, s.meta.term)
        if m.chunk_offset == 0:
            self._snap_in = key
            self._snap_buf = bytearray()
        if self._snap_in != key or m.chunk_offset != len(self._snap_buf):
            if m.chunk_offset < len(self._snap_buf) and self._snap_in == key:
                # Duplicate of a chunk we have: re-ack where we are.
                self._send(Message(MT.SNAP_RESP, to=m.frm, index=s.meta.index,
                                   chunk_offset=len(self._snap_buf)))
                return
            self._snap_in = None
            self._snap_buf = bytearray()
            self._send(Message(MT.SNAP_RESP, to=m.frm, index=s.meta.index, reject=True))
            return
        self._snap_buf += s.data
        if not m.chunk_last:
            self._send(Message(MT.SNAP_RESP, to=m.frm, index=s.meta.index,
                               chunk_offset=len(self._snap_buf)))
            return
        full = Snapshot(s.meta, bytes(self._snap_buf))
        self._snap_in = None
        self._snap_buf = bytearray()
        if self._restore(full):
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, s: Snapshot) -> bool:
        if s.meta.index <= self.log.committed:
            return False
        if self.role != StateRole.FOLLOWER:
            self.become_follower(self.term + 1, NONE)
            return False
        cs = s.meta.conf_state
        if self.id not in cs.voters and self.id not in cs.learners and self.log.last_index() > 0:
            # Not meant for us. A replica with an empty log is a manager being
            # added: it takes any snapshot, and learns of itself from the
            # membership change that follows in the log.
            return False
        if self.log.match_term(s.meta.index, s.meta.term):
            self.log.commit_to(s.meta.index)
            return False
        self.log.restore(s)
        self._apply_conf_state(cs)
        me = self.prs.get(self.id)
        if me is not None:
            me.match = s.meta.index
        return True

    # -- membership --------------------------------------------------------------

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        nid = cc.node_id
        nxt = self.log.last_index() + 1
        if cc.type == ConfChangeType.ADD_VOTER:
            p = self.prs.get(nid)
            if p is None:
                p = Progress(nxt, self.cfg.max_inflight_msgs)
                p.recent_active = True
                self.prs[nid] = p
            p.is_learner = False
        elif cc.type == ConfChangeType.ADD_LEARNER:
            if nid not in self.prs:
                p = Progress(nxt, self.cfg.max_inflight_msgs, is_learner=True)
                p.recent_active = True
                self.prs[nid] = p
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self.prs.pop(nid, None)
            if nid == self.lead_transferee:
                self.lead_transferee = NONE
        self.pending_conf_index = 0
        if self.role == StateRole.LEADER:
            if self.id not in self.prs or self.prs[self.id].is_learner:
                self.become_follower(self.term, NONE)
            elif self.voters() and self.maybe_commit():
                self.bcast_append()
        return self.conf_state()


class RawNode:
    """The driver-facing API around Raft: feed inputs, collect Ready batches."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.raft = Raft(config, storage)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        self.raft.step(Message(MT.HUP, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        self.raft.step(Message(MT.PROP, frm=self.raft.id, entries=[Entry(0, 0, EntryType.NORMAL, data)]))

    def propose_conf_change(self, cc: ConfChange) -> None:
        self.raft.step(Message(MT.PROP, frm=self.raft.id,
                               entries=[Entry(0, 0, EntryType.CONF_CHANGE, cc.encode())]))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(cc)

    def step(self, m: Message) -> None:
        if m.type in (MT.HUP, MT.BEAT, MT.CHECK_QUORUM, MT.UNREACHABLE, MT.SNAP_STATUS):
            raise StepError(f"local message {m.type.name} received from the network")
        if m.frm not in self.raft.prs and m.type in (MT.APP_RESP, MT.HEARTBEAT_RESP, MT.SNAP_RESP) :
            return  # a removed peer
        try:
            self.raft.step(m)
        except ProposalDropped:
            pass  # a forwarded proposal we cannot take; its proposer times out

    def transfer_leader(self, transferee: int) -> None:
        self.raft.step(Message(MT.TRANSFER_LEADER, frm=transferee))

    def read_index(self, ctx: bytes) -> None:
        self.raft.step(Message(MT.READ_INDEX, frm=self.raft.id,
                               entries=[Entry(0, 0, EntryType.NORMAL, ctx)], context=ctx))

    def report_unreachable(self, node_id: int) -> None:
        self.raft.step(Message(MT.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        self.raft.step(Message(MT.SNAP_STATUS, frm=node_id, reject=failed))

    def has_ready(self) -> bool:
        r = self.raft
        r.flush_bcast()
        if r.soft_state() != self._prev_soft:
            return True
        hs = r.hard_state()
        if hs != self._prev_hard:
            return True
        if r.log.unstable.snapshot is not None or r.log.unstable.entries:
            return True
        if r.msgs or r.read_states:
            return True
        return r.log.has_next_committed()

    def ready(self) -> Ready:
        r = self.raft
        r.flush_bcast()
        rd = Ready()
        ss = r.soft_state()
        if ss != self._prev_soft:
            rd.soft_state = ss
        hs = r.hard_state()
        if hs != self._prev_hard:
            rd.hard_state = hs
        rd.entries = r.log.unstable_entries()
        rd.snapshot = r.log.unstable.snapshot
        rd.committed_entries = r.log.next_committed()
        rd.messages, r.msgs = r.msgs, []
        rd.read_states, r.read_states = r.read_states, []
        prev = self._prev_hard
        rd.must_sync = bool(rd.entries) or (
            rd.hard_state is not None and (hs.term != prev.term or hs.vote != prev.vote)
        )
        return rd

    def advance(self, rd: Ready) -> None:
        r = self.raft
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.meta.index)
            r.log.applied = max(r.log.applied, rd.snapshot.meta.index)
        if rd.entries:
            e = rd.entries[-1]
            r.log.stable_to(e.index, e.term)
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)

    def status(self) -> Status:
        r = self.raft
        st = Status(
            id=r.id, term=r.term, vote=r.vote, commit=r.log.committed, applied=r.log.applied,
            lead=r.lead, role=r.role, lead_transferee=r.lead_transferee,
        )
        cs = r.conf_state()
        st.voters, st.learners = cs.voters, cs.learners
        if r.role == StateRole.LEADER:
            st.progress = {
                nid: ProgressStatus(p.match, p.next, p.state.name.lower(), p.recent_active, p.is_learner)
                for nid, p in r.prs.items()
            }
        return st
