"""Tests of agent.images, plus small helpers they share."""

from __future__ import annotations

import os
from pathlib import Path


def store_contents(root: Path) -> set[str]:
    """Every path under an image store root except the lock file, relative to it.

    Tests compare this before and after a failing pull: a failure must leave
    the set unchanged (no blob, snapshot, record, name, temp file or lease).
    """
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.startswith("snapshots/") and rel.count("/") >= 2:
            # Inside a snapshot: the snapshot directory itself is what counts.
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = os.path.normpath(os.path.join(rel, name))
            if p != "lock":
                out.add(p)
    return out


def lstat_tree(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.lstat()
    return out
