"""Snapshot files on a real directory: atomic save, pruning, damage handling."""

from __future__ import annotations

import logging
import os

import pytest

from manager.raft.snap import SnapshotError, Snapshotter
from manager.raft.types import ConfState, Snapshot, SnapshotMeta


def snap(index: int, term: int, size: int = 1000) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState([1, 2, 3], [4])), os.urandom(size))


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_save_and_load_exact(tmp_path) -> None:
    s = Snapshotter(str(tmp_path / "snap"))
    a, b = snap(100, 2), snap(200, 3)
    pa = s.save(a)
    s.save(b)
    assert os.path.basename(pa) == f"{2:016x}-{100:016x}.snap"
    assert sorted(os.listdir(tmp_path / "snap")) == sorted(
        [f"{2:016x}-{100:016x}.snap", f"{3:016x}-{200:016x}.snap"]
    )  # no temp files left behind
    assert s.load(100, 2) == a
    assert s.load(200, 3) == b
    assert s.load_newest() == b
    assert s.list() == [(2, 100), (3, 200)]


def test_load_missing_or_wrong_term_raises(tmp_path) -> None:
    s = Snapshotter(str(tmp_path))
    s.save(snap(100, 2))
    with pytest.raises(SnapshotError, match="does not exist"):
        s.load(100, 3)
    with pytest.raises(SnapshotError, match="does not exist"):
        s.load(101, 2)


def test_empty_dir(tmp_path) -> None:
    s = Snapshotter(str(tmp_path / "never-made"))
    assert s.load_newest() is None
    assert s.list() == []


def test_leftover_tmp_file_is_ignored_and_cleaned(tmp_path) -> None:
    d = tmp_path / "snap"
    s = Snapshotter(str(d))
    good = snap(100, 2)
    s.save(good)
    # A crash during save() of index 200: the temp file never got renamed.
    tmp = d / f"{3:016x}-{200:016x}.snap.1234.snap.tmp"
    tmp.write_bytes(b"partial")
    assert s.list() == [(2, 100)]
    assert s.load_newest() == good
    assert not tmp.exists()
    tmp.write_bytes(b"partial")
    assert s.load(100, 2) == good
    assert not tmp.exists()


def test_prune_keeps_newest(tmp_path) -> None:
    s = Snapshotter(str(tmp_path), keep=3)
    for i in range(1, 8):
        s.save(snap(i * 10, 1 + i // 3, size=10))
    assert s.list() == [(2, 50), (3, 60), (3, 70)]
    assert len(os.listdir(tmp_path)) == 3
    with pytest.raises(ValueError, match="at least 2"):
        Snapshotter(str(tmp_path), keep=1)


@pytest.mark.parametrize("damage", ["flip_body", "flip_header", "truncate", "empty", "wrong_name"])
def test_corrupt_newest_falls_back(tmp_path, caplog, damage: str) -> None:
    s = Snapshotter(str(tmp_path))
    old, new = snap(100, 2), snap(200, 2)
    s.save(old)
    p = s.save(new)
    if damage == "flip_body":
        flip(p, 500)
    elif damage == "flip_header":
        flip(p, 9)  # inside the stored checksum
    elif damage == "truncate":
        os.truncate(p, os.path.getsize(p) - 1)
    elif damage == "empty":
        os.truncate(p, 0)
    else:
        # A valid file under a name that is not its (term, index).
        os.replace(p, p + ".x")
        os.replace(s.save(snap(300, 2)), p)
        os.remove(p + ".x")
    with caplog.at_level(logging.ERROR, logger="manager.raft.snap"):
        got = s.load_newest()
    assert got == old
    assert any(p in r.message for r in caplog.records)
    assert os.path.exists(p + ".broken") and not os.path.exists(p)
    assert s.list() == [(2, 100)]
    with pytest.raises(SnapshotError):
        Snapshotter(str(tmp_path)).load(200, 2)  # gone from the listing


def test_load_exact_corrupt_raises_with_path(tmp_path) -> None:
    s = Snapshotter(str(tmp_path))
    p = s.save(snap(100, 2))
    flip(p, 300)
    with pytest.raises(SnapshotError, match="checksum") as ei:
        s.load(100, 2)
    assert p in str(ei.value)
    assert os.path.exists(p)  # load() reports; it does not move the file


def test_all_corrupt_gives_none(tmp_path, caplog) -> None:
    s = Snapshotter(str(tmp_path))
    for i in (1, 2):
        flip(s.save(snap(i, 1)), 100)
    with caplog.at_level(logging.ERROR, logger="manager.raft.snap"):
        assert s.load_newest() is None
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_empty_snapshot_refused_and_large_data_round_trips(tmp_path) -> None:
    s = Snapshotter(str(tmp_path))
    with pytest.raises(ValueError):
        s.save(Snapshot())
    big = snap(5, 1, size=5 << 20)
    s.save(big)
    assert s.load(5, 1) == big
