"""WAL tests on real files: round trips, rotation, release, and recovery from
torn tails, bit flips and missing segments."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from manager.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta
from manager.raft.wal import (
    WAL,
    WALCorruptError,
    WALError,
    WALMissingSegmentError,
    WALState,
)

META = b"\x01node-1/cluster-xyz"


def ents(first: int, last: int, term: int = 1, size: int = 32) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, bytes([i % 251]) * size) for i in range(first, last + 1)
    ]


def read_state(d: str) -> WALState:
    """Open, read and close again."""
    w, _, state = WAL.open(d)
    w.close()
    return state


@pytest.fixture
def wdir(tmp_path) -> str:
    return str(tmp_path / "wal")


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


# -- round trip --------------------------------------------------------------


def test_round_trip_with_overwrite_and_snapshot_marker(wdir: str) -> None:
    w = WAL.create(wdir, META)
    w.save(HardState(1, 1, 0), ents(1, 10))
    # A new leader overwrites the uncommitted suffix from 6 on.
    w.save(HardState(2, 2, 4), ents(6, 8, term=2))
    w.save_snapshot(SnapshotMeta(3, 1, ConfState([1, 2, 3], [4])))
    w.save(HardState(2, 2, 7), [])
    w.close()

    w2, meta, state = WAL.open(wdir)
    assert meta == META
    assert state.hard_state == HardState(2, 2, 7)
    assert state.snapshot == SnapshotMeta(3, 1, ConfState([1, 2, 3], [4]))
    assert state.entries == ents(4, 5) + ents(6, 8, term=2)

    # Writing continues after reopen and a second reopen sees both.
    w2.save(HardState(3, 1, 8), ents(9, 9, term=3))
    w2.close()
    state2 = read_state(wdir)
    assert state2.entries == ents(4, 5) + ents(6, 8, term=2) + ents(9, 9, term=3)
    assert state2.hard_state == HardState(3, 1, 8)


def test_fresh_wal_and_exists(wdir: str) -> None:
    assert not WAL.exists(wdir)
    w = WAL.create(wdir)
    assert WAL.exists(wdir)
    with pytest.raises(WALError, match="already exists"):
        WAL.create(wdir)
    w.close()
    w, meta, state = WAL.open(wdir)
    assert meta == b""
    assert state == WALState(HardState(), None, [])
    w.close()
    with pytest.raises(WALError, match="no WAL segments"):
        WAL.open(os.path.join(wdir, "nope"))


def test_save_rejects_gaps_and_closed_use(wdir: str) -> None:
    w = WAL.create(wdir)
    w.save(None, ents(1, 3))
    with pytest.raises(ValueError, match="past the end"):
        w.save(None, ents(5, 6))
    with pytest.raises(ValueError, match="consecutive"):
        w.save(None, [Entry(1, 4), Entry(1, 6)])
    # After a snapshot marker beyond the log (a follower installed a leader's
    # snapshot) the log continues after the marker.
    w.save_snapshot(SnapshotMeta(10, 2))
    w.save(None, ents(11, 12, term=2))
    with pytest.raises(ValueError, match="older"):
        w.save_snapshot(SnapshotMeta(9, 2))
    w.close()
    with pytest.raises(WALError, match="closed"):
        w.save(None, ents(13, 13))
    state = read_state(wdir)
    assert state.snapshot is not None and state.snapshot.index == 10
    assert state.entries == ents(11, 12, term=2)


def test_write_failure_poisons_the_log(wdir: str) -> None:
    w = WAL.create(wdir)
    w.save(None, ents(1, 1))
    assert w._fd is not None
    os.close(w._fd)  # the next write fails for real (EBADF)
    with pytest.raises(WALError, match="write failed"):
        w.save(None, ents(2, 2))
    with pytest.raises(WALError, match="failed earlier"):
        w.save(HardState(1, 0, 0), [])
    w.close()
    state = read_state(wdir)
    assert state.entries == ents(1, 1)


# -- segments ----------------------------------------------------------------


def test_segment_rotation_and_release(wdir: str) -> None:
    w = WAL.create(wdir, META, segment_size=1024)
    for i in range(1, 101, 5):
        w.save(HardState(1, 1, max(0, i - 1)), ents(i, i + 4, size=40))
    segs = w.segment_paths()
    assert len(segs) >= 4
    names = [os.path.basename(p) for p in segs]
    assert names == sorted(names)
    for p in segs[:-1]:
        # A segment is cut once it exceeds the size, so it overshoots by at
        # most one record.
        assert 1024 <= os.path.getsize(p) < 1024 + 512

    # release_to is clamped to the newest snapshot marker: without one,
    # nothing goes.
    w.release_to(60)
    assert w.segment_paths() == segs

    w.save_snapshot(SnapshotMeta(60, 1, ConfState([1])))
    segs = w.segment_paths()  # the marker may have cut one more
    names = [os.path.basename(p) for p in segs]
    firsts = [int(n.split("-")[1].split(".")[0], 16) for n in names]
    w.release_to(60)
    kept = w.segment_paths()
    removed = [p for p in segs if p not in kept]
    assert removed and kept == segs[len(removed) :]
    # The first segment kept is the one containing 60; all removed ones held
    # only entries below 60.
    assert firsts[len(removed)] <= 60
    assert len(removed) + 1 == len(segs) or firsts[len(removed) + 1] > 60
    for p in removed:
        assert not os.path.exists(p)

    w.save(HardState(1, 1, 100), ents(101, 101))
    w.close()
    w, meta, state = WAL.open(wdir, segment_size=1024)
    w.close()
    assert meta == META
    assert state.snapshot == SnapshotMeta(60, 1, ConfState([1]))
    assert state.hard_state == HardState(1, 1, 100)
    assert state.entries == ents(61, 100, size=40) + ents(101, 101)


def test_release_beyond_snapshot_is_clamped(wdir: str) -> None:
    w = WAL.create(wdir, segment_size=512)
    for i in range(1, 61, 3):
        w.save(None, ents(i, i + 2, size=40))
    w.save_snapshot(SnapshotMeta(20, 1))
    before = w.segment_paths()
    w.release_to(10_000)
    after = w.segment_paths()
    assert len(after) < len(before)
    w.close()
    state = read_state(wdir)
    assert state.entries == ents(21, 60, size=40)


def test_hard_state_survives_release_of_its_segment(wdir: str) -> None:
    # The only hard-state record sits in the first segment; later segments hold
    # entries only. The header of every new segment carries the hard state.
    w = WAL.create(wdir, segment_size=512)
    w.save(HardState(7, 3, 0), [])
    for i in range(1, 61, 3):
        w.save(None, ents(i, i + 2, size=40))
    w.save_snapshot(SnapshotMeta(50, 7))
    w.release_to(50)
    assert not os.path.exists(os.path.join(wdir, "0000000000000000-0000000000000001.wal"))
    w.close()
    state = read_state(wdir)
    assert state.hard_state == HardState(7, 3, 0)
    assert state.entries == ents(51, 60, size=40)


def test_leftover_tmp_segment_is_removed(wdir: str) -> None:
    w = WAL.create(wdir)
    w.save(None, ents(1, 2))
    w.close()
    tmp = os.path.join(wdir, "0000000000000001-0000000000000003.wal.tmp")
    with open(tmp, "wb") as f:
        f.write(b"half a header")
    w, _, state = WAL.open(wdir)
    assert not os.path.exists(tmp)
    assert state.entries == ents(1, 2)
    w.close()


# -- torn tails ---------------------------------------------------------------


def _wal_with_offsets(wdir: str, n: int = 10) -> tuple[str, list[int]]:
    """A single-segment WAL with n entry records; returns its path and the
    offset of each record (plus the end offset)."""
    w = WAL.create(wdir, META)
    path = w.segment_paths()[-1]
    offs = []
    for i in range(1, n + 1):
        offs.append(os.path.getsize(path))
        w.save(HardState(1, 1, i - 1), ents(i, i, size=200))
    offs.append(os.path.getsize(path))
    w.close()
    return path, offs


@pytest.mark.parametrize("cut", ["header", "middle", "last_byte"])
def test_torn_tail_truncated_with_warning(wdir: str, caplog, cut: str) -> None:
    path, offs = _wal_with_offsets(wdir)
    start, end = offs[-2], offs[-1]
    size = {"header": start + 5, "middle": (start + end) // 2, "last_byte": end - 1}[cut]
    os.truncate(path, size)
    with caplog.at_level(logging.WARNING, logger="manager.raft.wal"):
        w, _, state = WAL.open(wdir)
    assert any("torn write" in r.message and path in r.message for r in caplog.records)
    assert state.entries == [e for i in range(1, 10) for e in ents(i, i, size=200)]
    assert state.hard_state == HardState(1, 1, 8)
    assert os.path.getsize(path) == start
    # Writing continues where the torn record was, and survives another reopen.
    w.save(HardState(2, 1, 9), ents(10, 11, term=2))
    w.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="manager.raft.wal"):
        w, _, state = WAL.open(wdir)
    assert not caplog.records
    assert state.entries[-3:] == ents(9, 9, size=200) + ents(10, 11, term=2)
    assert state.hard_state == HardState(2, 1, 9)
    w.close()


def test_garbage_zeros_after_last_record(wdir: str, caplog) -> None:
    path, offs = _wal_with_offsets(wdir)
    with open(path, "ab") as f:
        f.write(b"\0" * 10_000)
    with caplog.at_level(logging.WARNING, logger="manager.raft.wal"):
        w, _, state = WAL.open(wdir)
    assert any("torn write" in r.message for r in caplog.records)
    assert len(state.entries) == 10  # nothing lost
    assert os.path.getsize(path) == offs[-1]
    w.save(None, ents(11, 11))
    w.close()
    state = read_state(wdir)
    assert [e.index for e in state.entries] == list(range(1, 12))


def test_torn_record_followed_by_zeros(wdir: str, caplog) -> None:
    # The file length made it to disk but the last record's data did not:
    # its second half reads back as zeros, and so does space after it.
    path, offs = _wal_with_offsets(wdir)
    start, end = offs[-2], offs[-1]
    with open(path, "r+b") as f:
        f.seek((start + end) // 2)
        f.write(b"\0" * (end - (start + end) // 2 + 4096))
    with caplog.at_level(logging.WARNING, logger="manager.raft.wal"):
        w, _, state = WAL.open(wdir)
    assert any("checksum mismatch" in r.message for r in caplog.records)
    assert [e.index for e in state.entries] == list(range(1, 10))
    w.close()


def test_damaged_unsynced_records_are_a_crash_artefact(wdir: str, caplog) -> None:
    # Records written with sync=False were never promised durable; if a crash
    # persisted a later one but not an earlier one, that is a torn tail too.
    w = WAL.create(wdir)
    path = w.segment_paths()[-1]
    w.save(HardState(1, 1, 0), ents(1, 3))
    off1 = os.path.getsize(path)
    w.save(HardState(1, 1, 1), [], sync=False)
    w.save(HardState(1, 1, 2), [], sync=False)
    w.close()
    flip_byte(path, off1 + 20)
    with caplog.at_level(logging.WARNING, logger="manager.raft.wal"):
        w, _, state = WAL.open(wdir)
    assert any("unsynced" in r.message for r in caplog.records)
    assert state.hard_state == HardState(1, 1, 0)
    assert os.path.getsize(path) == off1
    w.close()


# -- mid-log damage -------------------------------------------------------------


@pytest.mark.parametrize("where", ["payload", "length", "crc", "type"])
def test_bit_flip_in_the_middle_is_an_error(wdir: str, where: str) -> None:
    path, offs = _wal_with_offsets(wdir)
    bad = offs[4]
    flip_byte(path, bad + {"crc": 1, "type": 4, "length": 9, "payload": 40}[where])
    size = os.path.getsize(path)
    with pytest.raises(WALCorruptError) as ei:
        WAL.open(wdir)
    e = ei.value
    assert e.path == path and e.offset == bad
    assert path in str(e) and f"offset {bad}" in str(e)
    assert "re-join" in str(e)  # says what to do
    assert os.path.getsize(path) == size  # nothing was truncated


def test_damage_in_a_non_last_segment_is_an_error(wdir: str) -> None:
    segs, recs = _multi_segment(wdir)
    # Damage the last data record of the second segment and drop its cut
    # trailer: nothing valid follows the damage inside that file, but it is
    # not the tail of the log.
    p = segs[1]
    last_rec = recs[p][-1][0]
    flip_byte(p, last_rec + 30)
    os.truncate(p, recs[p][-1][1])
    with pytest.raises(WALCorruptError) as ei:
        WAL.open(wdir)
    assert ei.value.path == p
    assert ei.value.offset == last_rec


def test_damage_before_a_segment_trailer_is_an_error(wdir: str) -> None:
    segs, recs = _multi_segment(wdir)
    p = segs[1]
    last_rec = recs[p][-1][0]
    flip_byte(p, last_rec + 30)  # the trailer after it stays valid
    with pytest.raises(WALCorruptError) as ei:
        WAL.open(wdir)
    assert (ei.value.path, ei.value.offset) == (p, last_rec)


def test_damage_in_a_segment_header_is_an_error(wdir: str) -> None:
    w = WAL.create(wdir, segment_size=1024)
    for i in range(1, 40):
        w.save(None, ents(i, i, size=100))
    segs = w.segment_paths()
    w.close()
    flip_byte(segs[-1], 20)  # even in the last segment: headers are written atomically
    with pytest.raises(WALCorruptError) as ei:
        WAL.open(wdir)
    assert ei.value.path == segs[-1] and ei.value.offset == 0


def test_refused_open_leaves_files_untouched(wdir: str) -> None:
    # A torn trailer in the second-to-last segment would be repaired, but the
    # last segment has mid-log damage: the node is refused, and nothing on
    # disk may have changed.
    segs, recs = _multi_segment(wdir)
    os.truncate(segs[-2], os.path.getsize(segs[-2]) - 10)
    assert len(recs[segs[-1]]) >= 2
    flip_byte(segs[-1], recs[segs[-1]][0][0] + 40)
    sizes = {p: os.path.getsize(p) for p in segs}
    with pytest.raises(WALCorruptError):
        WAL.open(wdir)
    assert {p: os.path.getsize(p) for p in segs} == sizes


def test_swapped_segments_are_detected(wdir: str) -> None:
    w = WAL.create(wdir, segment_size=1024)
    for i in range(1, 60):
        w.save(None, ents(i, i, size=100))
    segs = w.segment_paths()
    w.close()
    tmp = segs[1] + ".x"
    os.rename(segs[1], tmp)
    os.rename(segs[2], segs[1])
    os.rename(tmp, segs[2])
    with pytest.raises(WALCorruptError, match="valid for seq 2, the file name says 1") as ei:
        WAL.open(wdir)
    assert ei.value.path == segs[1] and ei.value.offset == 0


# -- missing segments -----------------------------------------------------------


def _multi_segment(wdir: str) -> tuple[list[str], dict[str, list[tuple[int, int]]]]:
    """A WAL of several segments; returns the segment paths and, per segment,
    (start, end) of each entry record in it."""
    w = WAL.create(wdir, segment_size=1024)
    recs: dict[str, list[tuple[int, int]]] = {}
    for i in range(1, 60):
        p = w.segment_paths()[-1]
        before = os.path.getsize(p)
        w.save(HardState(1, 1, i - 1), ents(i, i, size=100))
        if w.segment_paths()[-1] != p:  # this save cut a new segment first
            p = w.segment_paths()[-1]
            before = -1
        end = os.path.getsize(p)
        recs.setdefault(p, []).append((before, end))
    segs = w.segment_paths()
    w.close()
    assert len(segs) >= 4
    # Every record here has the same size: fill in the starts of the records
    # that opened a segment.
    size = next(e - b for rs in recs.values() for b, e in rs if b >= 0)
    for rs in recs.values():
        rs[:] = [(e - size if b < 0 else b, e) for b, e in rs]
    return segs, recs


def test_missing_middle_segment(wdir: str) -> None:
    segs, _ = _multi_segment(wdir)
    os.remove(segs[2])
    with pytest.raises(WALMissingSegmentError) as ei:
        WAL.open(wdir)
    assert ei.value.missing_seq == 2
    assert "0000000000000002-*.wal" in str(ei.value)


def test_missing_last_segment(wdir: str) -> None:
    segs, _ = _multi_segment(wdir)
    os.remove(segs[-1])
    with pytest.raises(WALMissingSegmentError) as ei:
        WAL.open(wdir)
    assert ei.value.missing_seq == len(segs) - 1
    assert "ends with a cut" in str(ei.value)


def test_missing_first_segment_without_snapshot(wdir: str) -> None:
    segs, _ = _multi_segment(wdir)
    os.remove(segs[0])
    with pytest.raises(WALMissingSegmentError):
        WAL.open(wdir)


def test_crash_during_cut_before_trailer(wdir: str, caplog) -> None:
    # The new segment exists but the crash came before the old one got its
    # trailer (or while writing it): both are legitimate crash states.
    segs, recs = _multi_segment(wdir)
    prev = segs[-2]
    assert os.path.getsize(prev) > recs[prev][-1][1]  # it has a trailer
    os.truncate(prev, recs[prev][-1][1])  # no trailer at all
    w, _, state = WAL.open(wdir)
    assert len(state.entries) == 59
    w.close()

    segs, _ = _multi_segment(wdir + "2")
    prev = segs[-2]
    os.truncate(prev, os.path.getsize(prev) - 10)  # part of a trailer
    with caplog.at_level(logging.WARNING, logger="manager.raft.wal"):
        w, _, state = WAL.open(wdir + "2")
    assert any("torn write" in r.message for r in caplog.records)
    assert len(state.entries) == 59
    w.close()


# -- model-based property test -------------------------------------------------


class WALModel(RuleBasedStateMachine):
    """Random save / overwrite / snapshot / release / reopen against a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="waltest-")
        self.dir = os.path.join(self.tmp, "wal")
        self.seg_size = 400
        self.wal = WAL.create(self.dir, b"m", segment_size=self.seg_size)
        self.hs = HardState()
        self.snap: SnapshotMeta | None = None
        self.log: dict[int, Entry] = {}
        self.last = 0
        self.term = 1
        self.open_wals: list[WAL] = [self.wal]

    def _snap_index(self) -> int:
        return self.snap.index if self.snap else 0

    def expected(self) -> WALState:
        s = self._snap_index()
        return WALState(
            self.hs, self.snap, [self.log[i] for i in sorted(self.log) if i > s]
        )

    @rule(
        back=st.integers(0, 6),
        n=st.integers(0, 8),
        size=st.integers(0, 120),
        with_hs=st.booleans(),
        sync=st.booleans(),
    )
    def save(self, back: int, n: int, size: int, with_hs: bool, sync: bool) -> None:
        end = max(self.last, self._snap_index())
        first = max(self._snap_index() + 1, end + 1 - back)
        if back:
            self.term += 1  # an overwrite comes from a newer leader
        batch = [Entry(self.term, i, EntryType.NORMAL, os.urandom(size)) for i in range(first, first + n)]
        hs = HardState(self.term, 1 + back % 3, self._snap_index()) if with_hs else None
        self.wal.save(hs, batch, sync=sync)
        if hs is not None:
            self.hs = hs
        if batch:
            for i in [i for i in self.log if i >= first]:
                del self.log[i]
            for e in batch:
                self.log[e.index] = e
            self.last = batch[-1].index

    def _snapshot_at(self, frac: float, past: int) -> None:
        # Anywhere from the current marker to the last entry (local
        # compaction), or past the end (a follower installs a leader's snapshot).
        lo = self._snap_index()
        idx = lo + round(max(0, self.last - lo) * frac) if past == 0 else max(lo, self.last) + past
        meta = SnapshotMeta(idx, self.term, ConfState([1, 2, 3]))
        self.wal.save_snapshot(meta)
        self.snap = meta

    @rule(frac=st.floats(0, 1), past=st.sampled_from([0, 0, 0, 1, 7]))
    def snapshot(self, frac: float, past: int) -> None:
        self._snapshot_at(frac, past)

    @rule(frac=st.floats(0, 1), extra=st.sampled_from([0, 0, 1, 3, 50]))
    def snapshot_and_release(self, frac: float, extra: int) -> None:
        # What the driver does when it compacts; `extra` checks the clamp.
        self._snapshot_at(frac, 0)
        before = len(self.wal.segment_paths())
        self.wal.release_to(self._snap_index() + extra)
        event(f"release removed {min(before - len(self.wal.segment_paths()), 3)} segments")

    @rule(clean=st.booleans())
    def reopen(self, clean: bool) -> None:
        if clean:
            self.wal.close()
        # else: a crash; the old descriptor is abandoned (closed at teardown)
        self.wal, meta, state = WAL.open(self.dir, segment_size=self.seg_size)
        self.open_wals.append(self.wal)
        event(f"reopen with {min(len(self.wal.segment_paths()), 4)} segments, first seq>0: {'0000000000000000-' not in self.wal.segment_paths()[0]}")
        assert meta == b"m"
        assert state == self.expected()

    @invariant()
    def no_tmp_files(self) -> None:
        assert not [n for n in os.listdir(self.dir) if n.endswith(".tmp")]

    def teardown(self) -> None:
        try:
            for w in self.open_wals:
                w.close()
            w, _, state = WAL.open(self.dir, segment_size=self.seg_size)
            w.close()
            assert state == self.expected()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


TestWALModel = WALModel.TestCase
TestWALModel.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
