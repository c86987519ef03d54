"""The Raft write-ahead log: segmented, checksummed, group-committed.

This module owns the on-disk log of one Raft replica: the hard state (term,
vote, commit), the entries and the snapshot markers, in a directory of
segment files. It does not own snapshot files (see `snap`) and knows nothing
about the Raft algorithm beyond the overwrite rule "a record for index i
replaces i and everything after it".

On-disk format (version 1)
--------------------------
A segment is named ``{seq:016x}-{first_index:016x}.wal``: `seq` counts
segments from 0 without gaps, `first_index` is the index the next entry was
expected to have when the segment was cut. A segment is a sequence of records,
each 8-byte aligned::

    u32 crc | u8 type | u8 flags | u16 reserved (0) | u64 payload length
    payload (msgpack) | zero padding to a multiple of 8

`crc` is zlib's CRC-32 over everything after the crc field (header rest,
payload and padding), seeded with a value derived from the segment's seq and
the record's file offset, so a valid record copied to another place or into
another segment does not verify. Record types:

* HEADER (first record of every segment): format version, seq, first_index,
  the crc of the previous segment's last data record (the chain that detects
  a missing, reordered or replaced segment), the caller's metadata, and the
  hard state and snapshot marker current when the segment was cut, so that
  the segments before it can be deleted after a snapshot without losing them.
* ENTRIES: ``[hard state or None, [entries]]`` -- one per `save()` call,
  written with one `os.write` and made durable with one fdatasync.
* SNAPSHOT: a `SnapshotMeta` marker, written after the snapshot file itself
  is durable.
* CUT: trailer naming the next segment's seq, appended to a segment once
  its successor exists; a last segment ending in CUT means the successor was
  lost.

The flag SYNCED on a record says that everything before it in the segment was
already fsynced when it was written. It separates a crash artefact (damage
followed only by records written after an un-synced write -- nothing there
was ever promised to be durable) from real corruption (damage before data
that was durable): only the former may be truncated.

Recovery rules
--------------
* Damage in the last segment with nothing durable after it (incomplete
  record, checksum failure, zeros): truncated, with a warning.
* Any other damage: `WALCorruptError` naming the file and offset; a node
  never starts with committed entries silently dropped.
* A gap in the seq numbers, or a last segment ending with a CUT trailer:
  `WALMissingSegmentError`. Leading segments removed by `release_to` are
  legitimate (the first remaining header carries the state they held).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .types import Entry, HardState, SnapshotMeta

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

REC_HEADER = 1
REC_ENTRIES = 2
REC_SNAPSHOT = 3
REC_CUT = 4
_REC_TYPES = frozenset({REC_HEADER, REC_ENTRIES, REC_SNAPSHOT, REC_CUT})

FLAG_SYNCED = 0x01  # everything before this record was fsynced when it was written
_KNOWN_FLAGS = FLAG_SYNCED

# crc, type, flags, reserved, payload length
_HDR = struct.Struct("<IBBHQ")
_HDR_SIZE = _HDR.size  # 16
_REST = struct.Struct("<BBHQ")  # the header after the crc field
_CRC = struct.Struct("<I")
_PAD = tuple(b"\0" * n for n in range(8))

_SEGMENT_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_TMP_SUFFIX = ".wal.tmp"


class WALError(Exception):
    """Base class for write-ahead-log failures."""


class WALCorruptError(WALError):
    """Damage that cannot be a torn write; the node must not start on it."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"WAL segment {path} is corrupt at offset {offset}: {reason}. "
            "This is not a torn final write, so truncating it could drop committed "
            "entries. Restore this node's data directory from a backup, or remove "
            "the node from the cluster and re-join it with an empty data directory."
        )


class WALMissingSegmentError(WALError):
    """A segment the sequence needs is not on disk."""

    def __init__(self, dir: str, missing_seq: int, detail: str) -> None:
        self.dir = dir
        self.missing_seq = missing_seq
        super().__init__(
            f"WAL in {dir}: segment {missing_seq:016x}-*.wal is missing ({detail}). "
            "Restore it from a backup, or remove the node from the cluster and "
            "re-join it with an empty data directory."
        )


@dataclass
class WALState:
    """What `WAL.open` recovered."""

    hard_state: HardState
    snapshot: SnapshotMeta | None
    entries: list[Entry] = field(default_factory=list)


@dataclass
class _Segment:
    seq: int
    first_index: int
    path: str


@dataclass
class _Record:
    type: int
    flags: int
    offset: int
    crc: int
    payload: bytes


@dataclass
class _Damage:
    offset: int
    reason: str
    fatal: bool = False  # a valid checksum over content we cannot accept: never torn


@dataclass
class _Scan:
    records: list[_Record]
    end: int  # offset just after the last valid record
    damage: _Damage | None


def _seed(seq: int, offset: int) -> int:
    # Any distinct starting value gives a distinct CRC over the same bytes, so
    # a record only verifies at the place it was written.
    return ((offset * 0x9E3779B1) ^ (seq * 0x85EBCA77) ^ 0x5A17) & 0xFFFFFFFF


def _segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def _encode_record(rtype: int, flags: int, payload: bytes, seq: int, offset: int) -> tuple[bytes, int]:
    plen = len(payload)
    body = _REST.pack(rtype, flags, 0, plen) + payload + _PAD[-plen & 7]
    crc = zlib.crc32(body, _seed(seq, offset))
    return _CRC.pack(crc) + body, crc


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ignore(_seconds: float) -> None:
    pass


def _fdatasync(fd: int) -> None:
    # fdatasync also persists the file size, which is all an append needs.
    os.fdatasync(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


def _list_segments(dir: str) -> list[_Segment]:
    segs = []
    for name in os.listdir(dir):
        m = _SEGMENT_RE.match(name)
        if m:
            segs.append(_Segment(int(m.group(1), 16), int(m.group(2), 16), os.path.join(dir, name)))
    segs.sort(key=lambda s: s.seq)
    return segs


def _remove_tmp_files(dir: str) -> None:
    for name in os.listdir(dir):
        if name.endswith(_TMP_SUFFIX):
            os.remove(os.path.join(dir, name))


def _parse_record_at(data: bytes, seq: int, off: int) -> tuple[_Record | None, _Damage | None]:
    """The record at `off`, or None and what is wrong there."""
    n = len(data)
    if n - off < _HDR_SIZE:
        return None, _Damage(off, f"incomplete record header ({n - off} of {_HDR_SIZE} bytes)")
    crc, rtype, flags, reserved, plen = _HDR.unpack_from(data, off)
    end = off + _HDR_SIZE + plen + (-plen & 7)
    if end > n:
        return None, _Damage(
            off, f"record of {plen} payload bytes runs past the end of the file ({n} bytes)"
        )
    if zlib.crc32(memoryview(data)[off + 4 : end], _seed(seq, off)) != crc:
        if not any(data[off : min(end, off + 4096)]):
            return None, _Damage(off, "checksum mismatch (zeros: space never written)")
        return None, _Damage(off, "checksum mismatch")
    if rtype not in _REC_TYPES or flags & ~_KNOWN_FLAGS or reserved:
        # The checksum held, so this is no torn write but a format we do not know.
        return None, _Damage(
            off, f"unknown record type {rtype} / flags {flags:#x} with a valid checksum", fatal=True
        )
    return _Record(rtype, flags, off, crc, bytes(data[off + _HDR_SIZE : off + _HDR_SIZE + plen])), None


def _scan_segment(data: bytes, seq: int) -> _Scan:
    records: list[_Record] = []
    off = 0
    n = len(data)
    while off < n:
        rec, damage = _parse_record_at(data, seq, off)
        if rec is None:
            return _Scan(records, off, damage)
        records.append(rec)
        off += _HDR_SIZE + len(rec.payload) + (-len(rec.payload) & 7)
    return _Scan(records, off, None)


def _valid_records_after(data: bytes, seq: int, start: int) -> list[_Record]:
    """Valid records at aligned offsets after `start` (a resynchronising scan).

    Only runs when damage was found. Trailing zeros are skipped first, so a
    torn tail followed by preallocated or zeroed space costs almost nothing.
    """
    found: list[_Record] = []
    limit = len(data.rstrip(b"\0"))
    off = (start + 8) & ~7
    while off < limit:
        rtype = data[off + 4] if off + 4 < len(data) else 0
        if rtype in _REC_TYPES:
            rec, _ = _parse_record_at(data, seq, off)
            if rec is not None:
                found.append(rec)
                if rec.flags & FLAG_SYNCED:
                    return found  # enough to decide
                off += _HDR_SIZE + len(rec.payload) + (-len(rec.payload) & 7)
                continue
        off += 8
    return found


class _Replay:
    """Applies records in order, mirroring what the writer tracks."""

    def __init__(self, base: int, hs: HardState, snap: SnapshotMeta | None) -> None:
        self.hs = hs
        self.snap = snap
        self.last = base  # index of the last entry written (or the base before any)
        self.ents: list[Entry] = []

    def next_index_limit(self) -> int:
        return max(self.last, self.snap.index if self.snap else 0) + 1

    def apply_entries(self, hs: HardState | None, batch: list[Entry]) -> str:
        if hs is not None:
            self.hs = hs
        if not batch:
            return ""
        f = batch[0].index
        if f > self.next_index_limit():
            return f"entries start at index {f} but the log ends at {self.next_index_limit() - 1}"
        ents = self.ents
        if ents and ents[0].index <= f <= ents[-1].index + 1:
            del ents[f - ents[0].index :]
            ents.extend(batch)
        else:
            self.ents = list(batch)
        self.last = batch[-1].index
        return ""

    def result(self) -> WALState:
        s = self.snap.index if self.snap else 0
        ents = self.ents
        if ents and ents[0].index <= s:
            ents = ents[s - ents[0].index + 1 :] if ents[-1].index > s else []
        return WALState(self.hs, self.snap, ents)


def _decode_entries(payload: bytes) -> tuple[HardState | None, list[Entry]]:
    hs_w, ents_w = _unpack(payload)
    hs = HardState.from_wire(hs_w) if hs_w is not None else None
    batch = [Entry.from_wire(w) for w in ents_w]
    for i in range(1, len(batch)):
        if batch[i].index != batch[i - 1].index + 1:
            raise ValueError(f"entries not consecutive ({batch[i - 1].index} then {batch[i].index})")
    return hs, batch


class WAL:
    """An open write-ahead log, ready for appends. Not thread-safe."""

    def __init__(
        self,
        dir: str,
        metadata: bytes,
        segment_size: int,
        segments: list[_Segment],
        fd: int,
        offset: int,
        prev_crc: int,
        hard_state: HardState,
        snapshot: SnapshotMeta | None,
        last_index: int,
    ) -> None:
        # Use WAL.create / WAL.open.
        self.dir = dir
        # Told how long each flush took (the Raft driver passes its probe's).
        self.on_fsync: Callable[[float], None] = _ignore
        self.metadata = metadata
        self.segment_size = segment_size
        self._segments = segments
        self._fd: int | None = fd
        self._offset = offset
        self._prev_crc = prev_crc  # crc of the current segment's last data record
        self._hs = hard_state
        self._snap = snapshot
        self._last = last_index
        self._unsynced = False
        self._failed: BaseException | None = None

    # -- construction -------------------------------------------------------

    @staticmethod
    def exists(dir: str) -> bool:
        try:
            names = os.listdir(dir)
        except FileNotFoundError:
            return False
        return any(_SEGMENT_RE.match(n) for n in names)

    @classmethod
    def create(cls, dir: str, metadata: bytes = b"", *, segment_size: int = 64 << 20) -> WAL:
        if segment_size <= 0:
            raise ValueError(f"segment_size must be positive, got {segment_size}")
        if cls.exists(dir):
            raise WALError(f"WAL already exists in {dir}; open it instead of creating one")
        parent = os.path.dirname(os.path.abspath(dir))
        new_dir = not os.path.isdir(dir)
        os.makedirs(dir, exist_ok=True)
        if new_dir:
            _fsync_dir(parent)
        _remove_tmp_files(dir)
        hs = HardState()
        path, crc, size = cls._write_segment_file(dir, 0, 1, 0, metadata, hs, None)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return cls(dir, metadata, segment_size, [_Segment(0, 1, path)], fd, size, crc, hs, None, 0)

    @staticmethod
    def _write_segment_file(
        dir: str,
        seq: int,
        first_index: int,
        prev_crc: int,
        metadata: bytes,
        hs: HardState,
        snap: SnapshotMeta | None,
    ) -> tuple[str, int, int]:
        """Create a segment holding only its header, atomically: a crash leaves
        either no segment or a complete header, never a torn one."""
        payload = msgpack.packb(
            [
                FORMAT_VERSION,
                seq,
                first_index,
                prev_crc,
                metadata,
                hs.to_wire(),
                snap.to_wire() if snap is not None else None,
            ],
            use_bin_type=True,
        )
        rec, crc = _encode_record(REC_HEADER, FLAG_SYNCED, payload, seq, 0)
        path = os.path.join(dir, _segment_name(seq, first_index))
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, rec)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_dir(dir)
        return path, crc, len(rec)

    @classmethod
    def open(cls, dir: str, *, segment_size: int = 64 << 20) -> tuple[WAL, bytes, WALState]:
        if segment_size <= 0:
            raise ValueError(f"segment_size must be positive, got {segment_size}")
        if not cls.exists(dir):
            raise WALError(f"no WAL segments in {dir}")
        _remove_tmp_files(dir)
        segs = _list_segments(dir)
        for a, b in zip(segs, segs[1:]):
            if b.seq != a.seq + 1:
                raise WALMissingSegmentError(
                    dir, a.seq + 1, f"the sequence jumps from {os.path.basename(a.path)} to {os.path.basename(b.path)}"
                )

        metadata = b""
        replay: _Replay | None = None
        prev_tail_crc: int | None = None  # crc of the previous segment's last data record
        prev_cut: int | None = None
        last_crc = 0
        end = 0
        # Repairs wait until the whole log has been checked: a node that is
        # refused start must find its files exactly as the crash left them.
        repairs: list[tuple[str, int, str]] = []
        for i, seg in enumerate(segs):
            is_last = i == len(segs) - 1
            with open(seg.path, "rb") as f:
                data = f.read()
            scan = _scan_segment(data, seg.seq)
            records = scan.records
            if scan.damage is not None and scan.damage.fatal:
                raise WALCorruptError(seg.path, scan.damage.offset, scan.damage.reason)
            if not records:
                why = scan.damage.reason if scan.damage else "empty file"
                claimed = _claimed_seq(data)
                if claimed is not None and claimed != seg.seq:
                    why = (
                        f"the header is valid for seq {claimed}, the file name says {seg.seq}: "
                        "renamed or misplaced segment"
                    )
                raise WALCorruptError(seg.path, 0, f"no valid segment header ({why})")
            head = records[0]
            if head.type != REC_HEADER:
                raise WALCorruptError(seg.path, 0, "first record is not a segment header")
            try:
                version, h_seq, h_first, h_prev, h_meta, h_hs, h_snap = _unpack(head.payload)
            except Exception as e:
                raise WALCorruptError(seg.path, 0, f"undecodable segment header ({e})") from None
            if version != FORMAT_VERSION:
                raise WALError(f"{seg.path}: WAL format version {version} is not supported (this build reads {FORMAT_VERSION})")
            if h_seq != seg.seq or h_first != seg.first_index:
                raise WALCorruptError(
                    seg.path, 0,
                    f"header says seq {h_seq} / first index {h_first}, the file name says "
                    f"{seg.seq} / {seg.first_index} (renamed or misplaced segment)",
                )
            if replay is None:
                metadata = h_meta
                snap0 = SnapshotMeta.from_wire(h_snap) if h_snap is not None else None
                replay = _Replay(seg.first_index - 1, HardState.from_wire(h_hs), snap0)
            else:
                if h_meta != metadata:
                    raise WALCorruptError(seg.path, 0, "metadata differs from the first segment's (segment from another WAL?)")
                if prev_tail_crc is not None and h_prev != prev_tail_crc:
                    raise WALCorruptError(
                        seg.path, 0,
                        "the previous-segment checksum does not match the end of "
                        f"{os.path.basename(segs[i - 1].path)} (segments reordered, replaced or truncated)",
                    )
                if prev_cut is not None and prev_cut != seg.seq:
                    raise WALCorruptError(segs[i - 1].path, 0, f"cut trailer names seq {prev_cut}, next segment is {seg.seq}")
                if seg.first_index != replay.next_index_limit():
                    raise WALCorruptError(
                        seg.path, 0,
                        f"segment starts at index {seg.first_index} but the log before it ends at "
                        f"{replay.next_index_limit() - 1}",
                    )

            if scan.damage is not None:
                d = scan.damage
                after = _valid_records_after(data, seg.seq, d.offset)
                durable_after = [r for r in after if r.flags & FLAG_SYNCED]
                if durable_after:
                    raise WALCorruptError(
                        seg.path, d.offset,
                        f"{d.reason}; a durable record follows at offset {durable_after[0].offset}",
                    )
                if not is_last:
                    # Only the CUT trailer may be lost at the end of a non-last
                    # segment; the next header's chain proves nothing else was.
                    data_recs = [r for r in records if r.type != REC_CUT]
                    nxt = segs[i + 1]
                    if _read_header_prev_crc(nxt) != data_recs[-1].crc or after:
                        raise WALCorruptError(seg.path, d.offset, f"{d.reason} (in a segment that is not the last)")
                dropped = len(data) - d.offset
                note = f", including {len(after)} record(s) written after an unsynced write" if after else ""
                repairs.append((seg.path, d.offset, f"{d.reason}; truncating {dropped} bytes{note}"))

            prev_cut = None
            for rec in records[1:]:
                if prev_cut is not None:
                    raise WALCorruptError(seg.path, rec.offset, "record after a segment cut trailer")
                try:
                    if rec.type == REC_ENTRIES:
                        hs, batch = _decode_entries(rec.payload)
                        why = replay.apply_entries(hs, batch)
                        if why:
                            raise WALCorruptError(seg.path, rec.offset, why)
                    elif rec.type == REC_SNAPSHOT:
                        replay.snap = SnapshotMeta.from_wire(_unpack(rec.payload))
                    elif rec.type == REC_CUT:
                        prev_cut = int(_unpack(rec.payload))
                    else:
                        raise WALCorruptError(seg.path, rec.offset, "segment header in the middle of a segment")
                except WALError:
                    raise
                except Exception as e:
                    raise WALCorruptError(
                        seg.path, rec.offset,
                        f"record has a valid checksum but cannot be decoded ({type(e).__name__}: {e}); "
                        "written by an incompatible version?",
                    ) from None
            data_recs = [r for r in records if r.type != REC_CUT]
            prev_tail_crc = data_recs[-1].crc
            last_crc = prev_tail_crc
            end = scan.end if scan.damage is None else scan.damage.offset
            if is_last and prev_cut is not None:
                raise WALMissingSegmentError(
                    dir, prev_cut, f"{os.path.basename(seg.path)} ends with a cut to it"
                )

        assert replay is not None
        state = replay.result()
        s = state.snapshot.index if state.snapshot else 0
        if state.entries and state.entries[0].index != s + 1:
            raise WALMissingSegmentError(
                dir, max(segs[0].seq - 1, 0),
                f"entries resume at index {state.entries[0].index} but the snapshot marker is at {s}",
            )
        if segs[0].seq != 0 and state.snapshot is None:
            raise WALMissingSegmentError(
                dir, segs[0].seq - 1,
                "earlier segments were removed but no snapshot marker covers them",
            )
        for path, offset, what in repairs:
            log.warning("WAL %s: torn write at offset %d (%s)", path, offset, what)
            _truncate(path, offset)
        last = segs[-1]
        fd = os.open(last.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            # What we just read may still sit only in the page cache (the
            # process died, the machine did not); make it durable before the
            # node acts on it.
            _fdatasync(fd)
        except OSError:
            os.close(fd)
            raise
        wal = cls(
            dir, metadata, segment_size, segs, fd, end, last_crc,
            replay.hs, replay.snap, replay.last,
        )
        return wal, metadata, state

    # -- writing ------------------------------------------------------------

    def _check(self) -> int:
        if self._failed is not None:
            raise WALError(f"WAL in {self.dir} failed earlier and accepts no more writes: {self._failed}")
        if self._fd is None:
            raise WALError(f"WAL in {self.dir} is closed")
        return self._fd

    def _fail(self, what: str, e: OSError) -> WALError:
        # After a failed write or fsync the file's contents are unknown (a
        # partial record, or pages the kernel dropped): appending more would put
        # data after damage, so the log refuses everything from now on.
        self._failed = e
        return WALError(f"WAL in {self.dir}: {what} failed ({e}); the node must stop and restart")

    def _append(self, rtype: int, payload: bytes) -> None:
        fd = self._check()
        if self._offset >= self.segment_size:
            self._cut()
            fd = self._check()
        flags = 0 if self._unsynced else FLAG_SYNCED
        rec, crc = _encode_record(rtype, flags, payload, self._segments[-1].seq, self._offset)
        try:
            _write_all(fd, rec)
        except OSError as e:
            raise self._fail("write", e) from e
        self._offset += len(rec)
        self._prev_crc = crc
        self._unsynced = True

    def _fsync(self) -> None:
        fd = self._check()
        t0 = time.perf_counter()
        try:
            _fdatasync(fd)
        except OSError as e:
            raise self._fail("fsync", e) from e
        self.on_fsync(time.perf_counter() - t0)
        self._unsynced = False

    def _cut(self) -> None:
        old_fd = self._check()
        cur = self._segments[-1]
        try:
            if self._unsynced:
                _fdatasync(old_fd)
                self._unsynced = False
            seq = cur.seq + 1
            first = max(self._last, self._snap.index if self._snap else 0) + 1
            path, crc, size = self._write_segment_file(
                self.dir, seq, first, self._prev_crc, self.metadata, self._hs, self._snap
            )
            # The trailer goes in only once the successor exists, so a crash in
            # between never leaves a segment pointing at nothing.
            rec, _ = _encode_record(
                REC_CUT, FLAG_SYNCED, msgpack.packb(seq), cur.seq, self._offset
            )
            _write_all(old_fd, rec)
            _fdatasync(old_fd)
            new_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            raise self._fail("segment cut", e) from e
        os.close(old_fd)
        self._fd = new_fd
        self._segments.append(_Segment(seq, first, path))
        self._offset = size
        self._prev_crc = crc
        self._unsynced = False

    def save(self, hard_state: HardState | None, entries: list[Entry], *, sync: bool = True) -> None:
        """Append a hard state and/or entries as one record; with `sync`, it
        is durable when this returns (one fdatasync: group commit)."""
        self._check()
        if entries:
            f = entries[0].index
            limit = max(self._last, self._snap.index if self._snap else 0) + 1
            if f > limit:
                raise ValueError(f"entries start at index {f}, past the end of the log ({limit - 1})")
            if entries[-1].index - f != len(entries) - 1:
                raise ValueError("entries in one save() must have consecutive indexes")
        if hard_state is None and not entries:
            if sync and self._unsynced:
                self._fsync()
            return
        payload = msgpack.packb(
            [
                hard_state.to_wire() if hard_state is not None else None,
                [e.to_wire() for e in entries],
            ],
            use_bin_type=True,
        )
        self._append(REC_ENTRIES, payload)
        if hard_state is not None:
            self._hs = HardState(hard_state.term, hard_state.vote, hard_state.commit)
        if entries:
            self._last = entries[-1].index
        if sync:
            self._fsync()

    def save_snapshot(self, meta: SnapshotMeta) -> None:
        """Record that the snapshot file for `meta` is durable (fsynced)."""
        self._check()
        if self._snap is not None and meta.index < self._snap.index:
            raise ValueError(
                f"snapshot marker at index {meta.index} is older than the recorded one ({self._snap.index})"
            )
        self._append(REC_SNAPSHOT, msgpack.packb(meta.to_wire(), use_bin_type=True))
        self._snap = SnapshotMeta.from_wire(meta.to_wire())
        self._fsync()

    def release_to(self, index: int) -> None:
        """Delete whole segments that only hold entries below `index`.

        `index` is clamped to the newest snapshot marker: nothing a snapshot
        does not cover is ever released. The segment containing `index` and
        everything after it stay; the first one kept carries, in its header,
        the hard state and snapshot marker the deleted ones held.
        """
        self._check()
        limit = self._snap.index if self._snap else 0
        index = min(index, limit)
        keep_from = 0
        for i, seg in enumerate(self._segments):
            if seg.first_index <= index:
                keep_from = i
        if keep_from == 0:
            return
        doomed, self._segments = self._segments[:keep_from], self._segments[keep_from:]
        # Oldest first: a crash half-way leaves a suffix, which opens fine.
        for seg in doomed:
            try:
                os.remove(seg.path)
            except FileNotFoundError:
                pass
        _fsync_dir(self.dir)

    def sync(self) -> None:
        if self._unsynced:
            self._fsync()
        else:
            self._check()

    def close(self) -> None:
        if self._fd is None:
            return
        fd = self._fd
        try:
            if self._unsynced and self._failed is None:
                self._fsync()
        finally:
            self._fd = None
            try:
                os.close(fd)
            except OSError:
                if self._failed is None:
                    raise

    # -- introspection (tests, metrics) --------------------------------------

    def segment_paths(self) -> list[str]:
        return [s.path for s in self._segments]


def _read_header_prev_crc(seg: _Segment) -> int | None:
    with open(seg.path, "rb") as f:
        data = f.read(1 << 20)
    rec, _ = _parse_record_at(data, seg.seq, 0)
    if rec is None or rec.type != REC_HEADER:
        return None
    try:
        return int(_unpack(rec.payload)[3])
    except Exception:
        return None


def _claimed_seq(data: bytes) -> int | None:
    """The seq a segment header verifies with, when it does not verify with
    the seq in the file name (diagnosis of a renamed file only)."""
    if len(data) < _HDR_SIZE:
        return None
    _, rtype, _, _, plen = _HDR.unpack_from(data, 0)
    if rtype != REC_HEADER or _HDR_SIZE + plen > len(data):
        return None
    try:
        seq = int(_unpack(data[_HDR_SIZE : _HDR_SIZE + plen])[1])
    except Exception:
        return None
    rec, _ = _parse_record_at(data, seq, 0)
    return seq if rec is not None else None


def _truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "WAL",
    "WALCorruptError",
    "WALError",
    "WALMissingSegmentError",
    "WALState",
    "FORMAT_VERSION",
]
