"""Focused tests of the pure Raft core, driven message by message."""

from __future__ import annotations

import pytest

from manager.raft.core import Config, ProposalDropped, RawNode
from manager.raft.storage import MemoryStorage
from manager.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
    StateRole,
)

MT = MessageType


class Net:
    """A hand-driven network: nothing moves unless a test delivers it."""

    def __init__(self, n: int, **cfg: object) -> None:
        ids = list(range(1, n + 1))
        self.disks: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.cfg = cfg
        for i in ids:
            d = MemoryStorage()
            d.apply_snapshot(Snapshot(SnapshotMeta(1, 1, ConfState(voters=ids)), b""))
            d.set_hard_state(HardState(1, 0, 1))
            self.disks[i] = d
            self.nodes[i] = RawNode(Config(id=i, seed=i, **cfg), d)  # type: ignore[arg-type]
        self.outbox: list[Message] = []
        self.applied: dict[int, list[bytes]] = {i: [] for i in ids}
        self.cut: set[int] = set()
        self.delivered: list[Message] = []

    def ready(self, i: int) -> None:
        n, d = self.nodes[i], self.disks[i]
        while n.has_ready():
            rd = n.ready()
            if rd.snapshot is not None:
                d.apply_snapshot(rd.snapshot)
            if rd.hard_state is not None:
                d.set_hard_state(rd.hard_state)
            d.append(rd.entries)
            self.outbox.extend(rd.messages)
            for e in rd.committed_entries:
                if e.data:
                    self.applied[i].append(e.data)
            n.advance(rd)

    def flush(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            for i in self.nodes:
                self.ready(i)
            if not self.outbox:
                return
            msgs, self.outbox = self.outbox, []
            for m in msgs:
                if m.to in self.cut or m.frm in self.cut:
                    continue
                self.delivered.append(m)
                self.nodes[m.to].step(m)

    def elect(self, i: int) -> None:
        self.nodes[i].campaign()
        self.flush()
        assert self.role(i) == StateRole.LEADER

    def role(self, i: int) -> StateRole:
        return self.nodes[i].raft.role

    def restart(self, i: int) -> None:
        self.nodes[i] = RawNode(Config(id=i, seed=i + 100, **self.cfg), self.disks[i])  # type: ignore[arg-type]


def test_election_and_replication() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"a")
    net.flush()
    assert all(net.applied[i] == [b"a"] for i in (1, 2, 3))
    assert {net.nodes[i].raft.lead for i in (1, 2, 3)} == {1}


def test_prevote_keeps_partitioned_node_from_inflating_term() -> None:
    net = Net(3)
    net.elect(1)
    term = net.nodes[1].raft.term
    net.cut = {3}
    for _ in range(100):
        net.nodes[3].tick()
        net.flush()
    assert net.nodes[3].raft.term == term, "pre-vote must not bump the term of an isolated node"
    net.cut = set()
    net.flush()
    assert net.role(1) == StateRole.LEADER and net.nodes[1].raft.term == term


def test_check_quorum_steps_down_isolated_leader() -> None:
    net = Net(3)
    net.elect(1)
    net.cut = {1}
    for _ in range(25):
        net.nodes[1].tick()
        net.flush()
    assert net.role(1) == StateRole.FOLLOWER


def test_commit_rule_uses_current_term_only() -> None:
    net = Net(3)
    net.elect(1)
    r = net.nodes[1].raft
    # Fake a log tail from an older term, replicated to a majority.
    r.prs[2].match = r.log.last_index()
    before = r.log.committed
    r.term += 1  # the entries above are now from a previous term
    assert not r.maybe_commit()
    assert r.log.committed == before


def test_flow_control_bounds_inflight_appends() -> None:
    net = Net(3, max_inflight_msgs=4, max_size_per_msg=64)
    net.elect(1)
    net.cut = {2, 3}
    for k in range(40):
        net.nodes[1].propose(b"x" * 60)
    net.ready(1)
    apps = [m for m in net.outbox if m.type == MT.APP and m.to == 2]
    assert 1 <= len(apps) <= 4, f"{len(apps)} appends in flight to one follower"
    net.cut = set()
    net.outbox.clear()
    for _ in range(30):
        net.nodes[1].tick()
        net.flush()
    assert len(net.applied[2]) == 40


def test_follower_behind_compaction_gets_chunked_snapshot() -> None:
    net = Net(3, snapshot_chunk_size=10)
    net.elect(1)
    net.cut = {3}
    for k in range(20):
        net.nodes[1].propose(b"e%d" % k)
    net.flush()
    d = net.disks[1]
    snap = d.create_snapshot(d.last_index(), ConfState(voters=[1, 2, 3]), b"S" * 95)
    d.compact(d.last_index())
    net.cut = set()
    for _ in range(40):
        net.nodes[1].tick()
        net.flush()
    chunks = [m for m in net.delivered if m.type == MT.SNAP]
    assert len({m.chunk_offset for m in chunks}) >= 10, "snapshot was not sent in chunks"
    assert net.disks[3].snapshot().meta.index == snap.meta.index
    assert net.disks[3].snapshot().data == b"S" * 95


def test_learner_does_not_vote_and_can_be_promoted() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.flush()
    for i in (1, 2, 3):
        net.nodes[i].apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    for i in (1, 2, 3):
        net.nodes[i].apply_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 3))
    st = net.nodes[1].status()
    assert st.learners == [3] and st.voters == [1, 2]
    net.nodes[1].propose(b"v")
    net.flush()
    assert b"v" in net.applied[3], "learners receive the log"
    for i in (1, 2, 3):
        net.nodes[i].apply_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 3))
    assert net.nodes[1].status().voters == [1, 2, 3]


def test_leadership_transfer() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].transfer_leader(3)
    net.flush()
    assert net.role(3) == StateRole.LEADER
    assert net.role(1) == StateRole.FOLLOWER


def test_read_index_needs_quorum_and_forwarding_works() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"w")
    net.flush()
    net.nodes[2].read_index(b"ctx")  # follower forwards to the leader
    seen = []
    for _ in range(10):
        for i in (1, 2, 3):
            n = net.nodes[i]
            if n.has_ready():
                rd = n.ready()
                seen += [(i, rs) for rs in rd.read_states]
                net.disks[i].append(rd.entries)
                net.outbox += rd.messages
                n.advance(rd)
        msgs, net.outbox = net.outbox, []
        for m in msgs:
            net.nodes[m.to].step(m)
    assert seen and seen[0][0] == 2 and seen[0][1].request_ctx == b"ctx"
    assert seen[0][1].index >= 3
    # A leader cut off from everyone cannot confirm a read.
    net.cut = {2, 3}
    net.nodes[1].read_index(b"lonely")
    net.flush()
    assert not net.nodes[1].raft.read_states


def test_proposal_forwarding_and_drop_without_leader() -> None:
    net = Net(3)
    with pytest.raises(ProposalDropped):
        net.nodes[2].propose(b"nope")
    net.elect(1)
    net.nodes[3].propose(b"via-follower")
    net.flush()
    assert net.applied[1] == [b"via-follower"]


def test_removed_leader_steps_down() -> None:
    net = Net(3)
    net.elect(1)
    cs = net.nodes[1].apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    assert 1 not in cs.voters
    assert net.role(1) == StateRole.FOLLOWER


def test_restart_recovers_term_vote_and_log() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose(b"p")
    net.flush()
    t = net.nodes[2].raft.term
    net.restart(2)
    r = net.nodes[2].raft
    assert r.term == t and r.log.last_index() == net.disks[2].last_index()
    assert r.log.committed >= 3
