"""Deterministic simulation of a Raft cluster built on the pure core.

Everything is driven by one seeded RNG and a virtual clock: a simulated
network (delay, drop, duplicate, reorder, symmetric and asymmetric
partitions), node crashes that lose whatever was not yet persisted, restarts
from the durable "disk", membership changes (learner -> voter, removal),
leadership transfers, and log compaction with chunked snapshots. A client
workload of puts and ReadIndex gets on a few keys produces a history that is
checked for linearizability; safety invariants are checked after every step.

Replay one seed:  python3 -m tests.raft.sim --seed 1234 --nodes 5 [-v]
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import msgpack

from manager.raft.core import Config, ProposalDropped, RawNode
from manager.raft.driver import _LEADER_EARLY as LEADER_EARLY
from manager.raft.storage import Compacted, MemoryStorage
from manager.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    SnapshotMeta,
    StateRole,
)
from tests.linearizability import INF, Op, check_history


class InvariantViolation(AssertionError):
    pass


@dataclass
class SimConfig:
    nodes: int = 3
    steps: int = 1500
    tick_every: int = 2
    drop: float = 0.08
    duplicate: float = 0.03
    max_delay: int = 12
    crash_rate: float = 0.015
    partition_rate: float = 0.008
    conf_change_rate: float = 0.004
    transfer_rate: float = 0.003
    op_rate: float = 0.3
    keys: int = 3
    op_timeout: int = 200
    snapshot_every: int = 40
    keep_entries: int = 10
    chunk_size: int = 64
    settle_steps: int = 600


@dataclass
class Pending:
    op_id: int
    client: int
    kind: str
    key: str
    value: Any
    call: int
    node: int
    read_index: int | None = None


@dataclass
class SimNode:
    id: int
    disk: MemoryStorage
    node: RawNode | None = None
    kv: dict[str, Any] = field(default_factory=dict)
    applied: int = 0
    conf: ConfState = field(default_factory=ConfState)
    up: bool = True
    last_snap: int = 0


class Simulation:
    def __init__(self, seed: int, cfg: SimConfig, verbose: bool = False) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.now = 0
        ids = list(range(1, cfg.nodes + 1))
        self.spare = cfg.nodes + 1  # a node that may join later
        self.nodes: dict[int, SimNode] = {}
        boot = Snapshot(SnapshotMeta(1, 1, ConfState(voters=ids)), self._encode_sm({}, 1))
        for i in ids:
            d = MemoryStorage()
            d.apply_snapshot(boot)
            d.set_hard_state(HardState(1, 0, 1))
            self.nodes[i] = SimNode(i, d)
            self._start(self.nodes[i])
        spare = SimNode(self.spare, MemoryStorage())
        self.nodes[self.spare] = spare
        self._start(spare)
        self.net: list[tuple[int, int, Message]] = []  # (deliver_at, seq, msg)
        self.seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self.pending: dict[int, Pending] = {}
        self.history: list[Op] = []
        self.next_op = 1
        self.leaders: dict[int, int] = {}
        self.applied_global: dict[int, bytes] = {}
        # index -> (entry term, data, term in which the commit was seen)
        self.committed_global: dict[int, tuple[int, bytes, int]] = {}
        self.acked_puts: list[tuple[str, Any]] = []
        self.trace: list[str] = []
        self.faults = True

    # -- helpers ---------------------------------------------------------

    def log(self, s: str) -> None:
        line = f"[{self.now:5d}] {s}"
        self.trace.append(line)
        if len(self.trace) > 400:
            del self.trace[:200]
        if self.verbose:
            print(line)

    @staticmethod
    def _encode_sm(kv: dict[str, Any], applied: int) -> bytes:
        return msgpack.packb({"kv": kv, "applied": applied})

    def _start(self, n: SimNode) -> None:
        snap = n.disk.snapshot()
        applied = snap.meta.index
        n.kv = {}
        if not snap.is_empty():
            n.kv = dict(msgpack.unpackb(snap.data)["kv"])
            n.conf = ConfState(list(snap.meta.conf_state.voters), list(snap.meta.conf_state.learners))
        n.applied = applied
        n.last_snap = applied
        n.node = RawNode(
            Config(
                id=n.id, election_tick=10, heartbeat_tick=1, applied=applied,
                max_inflight_msgs=8, max_size_per_msg=512, snapshot_chunk_size=self.cfg.chunk_size,
                seed=self.rng.randrange(1 << 30),
            ),
            n.disk,
        )
        n.up = True

    def _send(self, m: Message) -> None:
        if (m.frm, m.to) in self.blocked:
            return
        if self.rng.random() < self.cfg.drop:
            return
        copies = 2 if self.rng.random() < self.cfg.duplicate else 1
        for _ in range(copies):
            self.seq += 1
            at = self.now + 1 + self.rng.randrange(self.cfg.max_delay)
            self.net.append((at, self.seq, Message.decode(m.encode())))

    # -- node handling ----------------------------------------------------

    def _crash(self, n: SimNode) -> None:
        self.log(f"crash n{n.id}")
        n.up = False
        n.node = None
        for p in list(self.pending.values()):
            if p.node == n.id:
                self._finish(p, None, known=False)

    def _handle_ready(self, n: SimNode) -> None:
        node = n.node
        assert node is not None
        while node.has_ready():
            rd = node.ready()
            # As the driver does: a leader sends appends before its own write.
            early = node.raft.role == StateRole.LEADER and all(
                m.type in LEADER_EARLY for m in rd.messages
            )
            if early:
                for m in rd.messages:
                    self._send(m)
            if self.faults and self.rng.random() < self.cfg.crash_rate / 4:
                # Crash before the batch is durable: it and its messages are lost.
                self._crash(n)
                return
            if rd.snapshot is not None:
                n.disk.apply_snapshot(rd.snapshot)
            if rd.hard_state is not None:
                n.disk.set_hard_state(rd.hard_state)
            if rd.entries:
                n.disk.append(rd.entries)
            if not early:
                for m in rd.messages:
                    self._send(m)
            if rd.snapshot is not None:
                snap = rd.snapshot
                n.kv = dict(msgpack.unpackb(snap.data)["kv"])
                n.applied = snap.meta.index
                n.last_snap = snap.meta.index
                n.conf = ConfState(list(snap.meta.conf_state.voters), list(snap.meta.conf_state.learners))
            for e in rd.committed_entries:
                self._apply(n, e)
            for rs in rd.read_states:
                self._read_state(n, rs.request_ctx, rs.index)
            node.advance(rd)
            self._maybe_compact(n)
        self._serve_reads(n)

    def _apply(self, n: SimNode, e: Entry) -> None:
        if e.index <= n.applied:
            return
        if e.index != n.applied + 1:
            raise InvariantViolation(f"n{n.id} applies {e.index} after {n.applied}")
        prev = self.applied_global.get(e.index)
        ident = msgpack.packb([e.term, int(e.type), e.data])
        if prev is None:
            self.applied_global[e.index] = ident
        elif prev != ident:
            raise InvariantViolation(f"n{n.id} applied a different entry at {e.index}")
        n.applied = e.index
        assert n.node is not None
        if e.type == EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            n.conf = n.node.apply_conf_change(cc)
            self.log(f"n{n.id} applied conf {cc.type.name} {cc.node_id} -> {n.conf}")
            return
        if not e.data:
            return
        op_id, client, key, value = msgpack.unpackb(e.data)
        n.kv[key] = value
        p = self.pending.get(op_id)
        if p is not None and p.node == n.id:
            self._finish(p, None, known=True)

    def _maybe_compact(self, n: SimNode) -> None:
        if n.applied - n.last_snap < self.cfg.snapshot_every:
            return
        data = self._encode_sm(n.kv, n.applied)
        n.disk.create_snapshot(n.applied, n.conf, data)
        n.disk.compact(max(n.disk.first_index(), n.applied - self.cfg.keep_entries))
        n.last_snap = n.applied

    def _read_state(self, n: SimNode, ctx: bytes, index: int) -> None:
        op_id = msgpack.unpackb(ctx)
        p = self.pending.get(op_id)
        if p is not None and p.node == n.id and p.read_index is None:
            p.read_index = index

    def _serve_reads(self, n: SimNode) -> None:
        for p in list(self.pending.values()):
            if p.node == n.id and p.kind == "get" and p.read_index is not None and n.applied >= p.read_index:
                self._finish(p, n.kv.get(p.key), known=True)

    def _finish(self, p: Pending, output: Any, known: bool) -> None:
        self.pending.pop(p.op_id, None)
        self.history.append(
            Op(p.client, p.kind, p.key, value=p.value, output=output, call=p.call,
               ret=self.now if known else INF)
        )
        if known and p.kind == "put":
            self.acked_puts.append((p.key, p.value))

    # -- actions -----------------------------------------------------------------

    def _client_op(self) -> None:
        up = [n for n in self.nodes.values() if n.up and n.node is not None and n.id != self.spare]
        if not up:
            return
        n = self.rng.choice(up)
        assert n.node is not None
        client = self.rng.randrange(5)
        if any(p.client == client for p in self.pending.values()):
            return  # one outstanding op per client
        key = f"k{self.rng.randrange(self.cfg.keys)}"
        op_id = self.next_op
        self.next_op += 1
        if self.rng.random() < 0.5:
            value = op_id
            p = Pending(op_id, client, "put", key, value, self.now, n.id)
            try:
                n.node.propose(msgpack.packb([op_id, client, key, value]))
            except ProposalDropped:
                return  # refused at once: never applied, not part of the history
        else:
            p = Pending(op_id, client, "get", key, None, self.now, n.id)
            n.node.read_index(msgpack.packb(op_id))
        self.pending[op_id] = p

    def _leader(self) -> SimNode | None:
        best = None
        for n in self.nodes.values():
            if n.up and n.node is not None and n.node.raft.role == StateRole.LEADER:
                if best is None or n.node.raft.term > best.node.raft.term:  # type: ignore[union-attr]
                    best = n
        return best

    def _conf_change(self) -> None:
        ld = self._leader()
        if ld is None or ld.node is None:
            return
        conf = ld.conf
        members = set(conf.voters) | set(conf.learners)
        r = self.rng.random()
        try:
            if self.spare not in members and r < 0.5:
                cc = ConfChange(ConfChangeType.ADD_LEARNER, self.spare)
            elif self.spare in conf.learners:
                cc = ConfChange(ConfChangeType.ADD_VOTER, self.spare)
            elif len(conf.voters) > self.cfg.nodes and self.spare in conf.voters:
                cc = ConfChange(ConfChangeType.REMOVE_NODE, self.spare)
            else:
                return
            ld.node.propose_conf_change(cc)
            self.log(f"propose {cc.type.name} {cc.node_id} at leader n{ld.id}")
        except ProposalDropped:
            pass

    def _transfer(self) -> None:
        ld = self._leader()
        if ld is None or ld.node is None:
            return
        others = [v for v in ld.conf.voters if v != ld.id]
        if others:
            to = self.rng.choice(others)
            self.log(f"transfer leadership n{ld.id} -> n{to}")
            ld.node.transfer_leader(to)

    def _partition(self) -> None:
        ids = list(self.nodes)
        if self.blocked and self.rng.random() < 0.6:
            self.log("heal")
            self.blocked.clear()
            return
        a = self.rng.choice(ids)
        if self.rng.random() < 0.5:
            # Symmetric: isolate a from everyone.
            for b in ids:
                if b != a:
                    self.blocked.add((a, b))
                    self.blocked.add((b, a))
            self.log(f"partition: n{a} isolated")
        else:
            b = self.rng.choice([i for i in ids if i != a])
            self.blocked.add((a, b))
            self.log(f"partition: n{a} -> n{b} blocked (asymmetric)")

    # -- invariants ------------------------------------------------------------

    def _check(self) -> None:
        for n in self.nodes.values():
            if not n.up or n.node is None:
                continue
            r = n.node.raft
            if r.role == StateRole.LEADER:
                prev = self.leaders.setdefault(r.term, n.id)
                if prev != n.id:
                    raise InvariantViolation(f"two leaders in term {r.term}: n{prev} and n{n.id}")
                self._check_leader_completeness(n)
            # Record committed entries (from the node's own log).
            c = r.log.committed
            lo = max(r.log.first_index(), max(self.committed_global, default=0) + 1)
            if c >= lo:
                for e in r.log.slice(lo, c + 1):
                    self.committed_global[e.index] = (e.term, e.data, r.term)
            for idx in range(max(lo - 3, r.log.first_index()), min(c, lo) ):
                want = self.committed_global.get(idx)
                if want is not None and r.log.term(idx) != want[0]:
                    raise InvariantViolation(f"n{n.id} committed a different entry at {idx}")
        self._check_log_matching()

    def _check_leader_completeness(self, n: SimNode) -> None:
        r = n.node.raft  # type: ignore[union-attr]
        first = r.log.first_index()
        for idx, (term, data, seen_in) in self.committed_global.items():
            # Completeness binds leaders of later terms; a deposed leader of an
            # older term may still believe it leads until it hears otherwise.
            if idx < first or r.term <= seen_in:
                continue
            if idx > r.log.last_index():
                raise InvariantViolation(f"leader n{n.id} (term {r.term}) lacks committed entry {idx}")
            t = r.log.term(idx)
            if t != term:
                raise InvariantViolation(
                    f"leader n{n.id} (term {r.term}) has term {t} at committed index {idx}, want {term}"
                )

    def _check_log_matching(self) -> None:
        live = [n for n in self.nodes.values() if n.up and n.node is not None]
        for i, a in enumerate(live):
            la = a.node.raft.log  # type: ignore[union-attr]
            for b in live[i + 1 :]:
                lb = b.node.raft.log  # type: ignore[union-attr]
                lo = max(la.first_index(), lb.first_index())
                hi = min(la.last_index(), lb.last_index())
                # Highest index where both terms agree: everything below must match.
                k = hi
                while k >= lo:
                    if la.term(k) == lb.term(k):
                        break
                    k -= 1
                if k < lo:
                    continue
                ea = la.slice(lo, k + 1)
                eb = lb.slice(lo, k + 1)
                for x, y in zip(ea, eb):
                    if x.term != y.term or x.data != y.data or x.type != y.type:
                        raise InvariantViolation(
                            f"log matching: n{a.id} and n{b.id} agree at {k} but differ at {x.index}"
                        )

    # -- main loop -------------------------------------------------------------

    def step(self, allow_faults: bool = True) -> None:
        self.now += 1
        self.faults = allow_faults
        cfg = self.cfg
        rng = self.rng
        if allow_faults:
            if rng.random() < cfg.crash_rate:
                up = [n for n in self.nodes.values() if n.up]
                if up:
                    self._crash(rng.choice(up))
            if rng.random() < cfg.partition_rate:
                self._partition()
            if rng.random() < cfg.conf_change_rate:
                self._conf_change()
            if rng.random() < cfg.transfer_rate:
                self._transfer()
        for n in self.nodes.values():
            if not n.up and rng.random() < 0.05:
                self.log(f"restart n{n.id}")
                self._start(n)
        if rng.random() < cfg.op_rate:
            self._client_op()
        if self.now % cfg.tick_every == 0:
            for n in self.nodes.values():
                if n.up and n.node is not None:
                    n.node.tick()
        # Deliver due messages in random order (reordering).
        due = [x for x in self.net if x[0] <= self.now]
        if due:
            self.net = [x for x in self.net if x[0] > self.now]
            rng.shuffle(due)
            for _, _, m in due:
                dst = self.nodes.get(m.to)
                if dst is None or not dst.up or dst.node is None:
                    continue
                dst.node.step(m)
        for n in list(self.nodes.values()):
            if n.up and n.node is not None:
                self._handle_ready(n)
        for p in list(self.pending.values()):
            if self.now - p.call > cfg.op_timeout:
                self._finish(p, None, known=False)
        self._check()

    def run(self) -> None:
        for _ in range(self.cfg.steps):
            self.step()
        # Heal everything and let the cluster settle, then check outcomes.
        self.blocked.clear()
        self.faults = False
        for n in self.nodes.values():
            if not n.up:
                self._start(n)
        for _ in range(self.cfg.settle_steps):
            self.step(allow_faults=False)
        for p in list(self.pending.values()):
            self._finish(p, None, known=False)
        self._check_final()

    def _check_final(self) -> None:
        ld = self._leader()
        if ld is None:
            raise InvariantViolation("no leader after healing and settling")
        # Every acknowledged write is applied on every member's state machine
        # (an acked write may since be overwritten: check it's in the log order).
        members = set(ld.conf.voters) | set(ld.conf.learners)
        applied = [self.nodes[i].applied for i in members]
        top = max(self.applied_global)
        for i in members:
            n = self.nodes[i]
            if n.applied < min(applied):
                raise InvariantViolation(f"n{i} applied only {n.applied}")
        written = set()
        for idx in range(1, top + 1):
            ident = self.applied_global.get(idx)
            if ident is None:
                continue
            term, typ, data = msgpack.unpackb(ident)
            if typ == int(EntryType.NORMAL) and data:
                _, _, key, value = msgpack.unpackb(data)
                written.add((key, value))
        lost = [w for w in self.acked_puts if tuple(w) not in written]
        if lost:
            raise InvariantViolation(f"acknowledged writes lost: {lost[:5]}")
        res = check_history(self.history)
        if not res.ok:
            raise InvariantViolation(res.detail)


def run_seed(seed: int, nodes: int = 3, verbose: bool = False, steps: int | None = None) -> Simulation:
    cfg = SimConfig(nodes=nodes)
    if steps is not None:
        cfg.steps = steps
    sim = Simulation(seed, cfg, verbose)
    try:
        sim.run()
    except (InvariantViolation, AssertionError, Compacted) as e:
        tail = "\n".join(sim.trace[-40:])
        raise InvariantViolation(
            f"seed {seed} ({nodes} nodes) failed at t={sim.now}: {e}\n"
            f"replay: python3 -m tests.raft.sim --seed {seed} --nodes {nodes} -v\n"
            f"last events:\n{tail}"
        ) from e
    return sim


def main() -> None:
    ap = argparse.ArgumentParser(description="Replay one Raft simulation seed.")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    try:
        sim = run_seed(a.seed, a.nodes, a.verbose, a.steps)
    except InvariantViolation as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    ok = sum(1 for o in sim.history if o.known)
    print(f"seed {a.seed}: ok; {len(sim.history)} ops ({ok} with known outcome), "
          f"{len(sim.applied_global)} entries applied, {len(sim.leaders)} terms with a leader")


if __name__ == "__main__":
    main()
