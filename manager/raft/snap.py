"""Raft snapshot files: atomic writes, checksums, pruning.

This module owns the snapshot directory of one replica. A snapshot file is
named ``{term:016x}-{index:016x}.snap`` and holds::

    magic b"ORCHSNP1" | u32 crc32 of body | u64 body length | body

where body is the msgpack of `Snapshot.to_wire()`. Files are written to a
temporary name, fsynced, renamed into place and the directory fsynced, so a
crash leaves either the old set of snapshots or the new one plus, at worst,
a ``*.snap.tmp`` file that is ignored and removed on the next load.

The WAL records a marker naming (index, term) only after `save` returned;
on restart the driver loads exactly that snapshot with `load`. Pruning keeps
the newest `keep` files (at least 2), so the snapshot an older marker names
survives a crash between writing a new snapshot and recording its marker.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib

import msgpack

from .types import Snapshot

log = logging.getLogger(__name__)

_MAGIC = b"ORCHSNP1"
_HEAD = struct.Struct("<8sIQ")
_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_TMP_SUFFIX = ".snap.tmp"
_BROKEN_SUFFIX = ".broken"


class SnapshotError(Exception):
    """A snapshot that was asked for is missing or unreadable."""


def _name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}.snap"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Snapshotter:
    """Reads and writes the snapshot files in one directory."""

    def __init__(self, dir: str, *, keep: int = 3) -> None:
        if keep < 2:
            # With one file, the snapshot the WAL marker still names is deleted
            # before the marker moves on: a crash in between loses it.
            raise ValueError(f"keep must be at least 2, got {keep}")
        self.dir = dir
        self.keep = keep

    # -- writing --------------------------------------------------------------

    def save(self, snap: Snapshot) -> str:
        """Write `snap` atomically and durably; prune to `keep`. Returns the path."""
        meta = snap.meta
        if meta.index <= 0:
            raise ValueError("cannot save an empty snapshot (index 0)")
        os.makedirs(self.dir, exist_ok=True)
        body = msgpack.packb(snap.to_wire(), use_bin_type=True)
        head = _HEAD.pack(_MAGIC, zlib.crc32(body), len(body))
        path = os.path.join(self.dir, _name(meta.term, meta.index))
        tmp = f"{path}.{os.getpid()}{_TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                _write_all(fd, head)
                _write_all(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.dir)
        self._prune()
        return path

    def _prune(self) -> None:
        snaps = self._sorted()
        doomed = snaps[: max(0, len(snaps) - self.keep)]
        for term, index in doomed:
            try:
                os.remove(os.path.join(self.dir, _name(term, index)))
            except FileNotFoundError:
                pass
        if doomed:
            _fsync_dir(self.dir)

    # -- reading --------------------------------------------------------------

    def _sorted(self) -> list[tuple[int, int]]:
        """(term, index) of the snapshot files, oldest first."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = []
        for n in names:
            m = _NAME_RE.match(n)
            if m:
                found.append((int(m.group(1), 16), int(m.group(2), 16)))
        found.sort(key=lambda ti: (ti[1], ti[0]))
        return found

    def list(self) -> list[tuple[int, int]]:
        """(term, index) of every snapshot file present, oldest first (unverified)."""
        return self._sorted()

    def _clean_tmp(self) -> None:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for n in names:
            if n.endswith(_TMP_SUFFIX):
                # Left by a crash during save(): never renamed, so never named
                # by the WAL; safe to drop.
                try:
                    os.remove(os.path.join(self.dir, n))
                except FileNotFoundError:
                    pass

    def _read(self, path: str, term: int, index: int) -> Snapshot:
        """Read and verify one file; raises SnapshotError saying what is wrong."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {path} does not exist") from None
        except OSError as e:
            raise SnapshotError(f"snapshot {path} cannot be read: {e}") from None
        if len(raw) < _HEAD.size:
            raise SnapshotError(f"snapshot {path} is truncated ({len(raw)} bytes, header needs {_HEAD.size})")
        magic, crc, length = _HEAD.unpack_from(raw)
        if magic != _MAGIC:
            raise SnapshotError(f"snapshot {path} is not a snapshot file (bad magic {magic!r})")
        body = memoryview(raw)[_HEAD.size :]
        if len(body) != length:
            raise SnapshotError(
                f"snapshot {path} is truncated or has trailing data: header says {length} bytes, "
                f"file has {len(body)}"
            )
        if zlib.crc32(body) != crc:
            raise SnapshotError(f"snapshot {path} fails its checksum (damaged on disk)")
        try:
            snap = Snapshot.from_wire(msgpack.unpackb(body, raw=False, strict_map_key=False))
        except Exception as e:
            raise SnapshotError(f"snapshot {path} has a valid checksum but cannot be decoded: {e}") from None
        if not isinstance(snap.data, bytes):
            raise SnapshotError(f"snapshot {path}: data is {type(snap.data).__name__}, expected bytes")
        if snap.meta.term != term or snap.meta.index != index:
            raise SnapshotError(
                f"snapshot {path} holds term {snap.meta.term} index {snap.meta.index}, "
                "not what its name says (renamed file?)"
            )
        return snap

    def load(self, index: int, term: int) -> Snapshot:
        """Exactly the snapshot (index, term); SnapshotError if absent or damaged."""
        self._clean_tmp()
        return self._read(os.path.join(self.dir, _name(term, index)), term, index)

    def load_newest(self) -> Snapshot | None:
        """The newest readable snapshot, or None. Damaged files are logged,
        renamed to ``*.broken`` (kept for inspection, out of the way of the
        next load) and the next older one is tried."""
        self._clean_tmp()
        for term, index in reversed(self._sorted()):
            path = os.path.join(self.dir, _name(term, index))
            try:
                return self._read(path, term, index)
            except SnapshotError as e:
                log.error("%s; moving it aside to %s%s and trying an older one", e, path, _BROKEN_SUFFIX)
                try:
                    os.replace(path, path + _BROKEN_SUFFIX)
                except OSError as e2:
                    log.error("could not rename %s: %s", path, e2)
        return None


__all__ = ["SnapshotError", "Snapshotter"]
