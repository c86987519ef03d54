"""Container logs: size-rotated k8s-format files, read across rotations.

conmon writes `container.log` in the CRI ("k8s-file") format and, when the
file reaches --log-size-max, replaces it with a fresh file (write to a temp
file, rename over). The old inode would simply be dropped, so the engine
keeps history by hard links: each time it sees a new inode at
`container.log` it links it as `logs/<seq>.log` and prunes the oldest links
beyond `max_files`. A rotated file keeps all of its content because the
link was made while conmon was still writing it; only a file that conmon
both created and replaced between two checks (more than --log-size-max in
one tick) is lost, and the tick is short.

Readers go through the segments in order and, when following, move to the
next segment after draining the current one, so `logs -f` neither misses
nor repeats lines across a rotation.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LogLine:
    ts: str
    stream: str  # stdout | stderr
    line: str
    partial: bool = False  # the writer split a long line; "F" ends it


def parse_line(raw: str) -> LogLine | None:
    # "2026-11-23T05:29:23.660028417+00:00 stdout F hello"
    parts = raw.split(" ", 3)
    if len(parts) < 3:
        return None
    ts, stream, tag = parts[0], parts[1], parts[2]
    if stream not in ("stdout", "stderr") or tag not in ("F", "P"):
        return None
    return LogLine(ts, stream, parts[3] if len(parts) > 3 else "", tag == "P")


class LogFiles:
    """The rotated segments of one container's log."""

    def __init__(self, cdir: str, max_files: int = 3) -> None:
        self.current = os.path.join(cdir, "container.log")
        self.dir = os.path.join(cdir, "logs")
        self.max_files = max(1, max_files)

    def segments(self) -> list[str]:
        """Linked segments, oldest first."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(".log"))
        except FileNotFoundError:
            return []
        return [os.path.join(self.dir, n) for n in names]

    def track(self) -> bool:
        """Link a new current file if conmon rotated; prune old ones.
        Returns True when a new segment was linked."""
        try:
            cur = os.stat(self.current)
        except FileNotFoundError:
            return False
        segs = self.segments()
        if segs:
            try:
                if os.stat(segs[-1]).st_ino == cur.st_ino:
                    return False
            except FileNotFoundError:
                pass
        os.makedirs(self.dir, exist_ok=True)
        seq = int(os.path.basename(segs[-1])[:-4]) + 1 if segs else 1
        try:
            os.link(self.current, os.path.join(self.dir, f"{seq:08d}.log"))
        except FileNotFoundError:
            return False  # replaced again just now; the next tick links it
        except FileExistsError:
            return False
        for old in self.segments()[: -self.max_files]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
        return True

    def _paths(self) -> list[str]:
        segs = self.segments()
        try:
            cur_ino = os.stat(self.current).st_ino
        except FileNotFoundError:
            return segs
        if not segs or os.stat(segs[-1]).st_ino != cur_ino:
            segs.append(self.current)  # not linked yet (just rotated, or before the first check)
        return segs

    async def read(
        self, *, follow: bool = False, tail: int | None = None, ended: Callable[[], bool] | None = None,
        poll: float = 0.1,
    ) -> AsyncIterator[LogLine]:
        """Yield lines from the oldest kept segment on; with `follow`, keep
        going until `ended()` is true and everything written was read."""
        paths = self._paths()
        if tail is not None:
            lines: list[LogLine] = []
            for p in paths:
                lines.extend(_read_all(p))
            for item in lines[-tail:] if tail else []:
                yield item
            if not follow:
                return
            paths = paths[-1:]
            start_at_end = True
        else:
            start_at_end = False
        if not paths and not follow:
            return
        idx = 0
        f = None
        partial = ""
        try:
            while True:
                if f is None and idx < len(paths):
                    try:
                        f = open(paths[idx], errors="replace")
                    except FileNotFoundError:
                        idx += 1  # pruned meanwhile
                        continue
                    if start_at_end:
                        f.seek(0, os.SEEK_END)
                        start_at_end = False
                chunk = f.read() if f is not None else ""
                if chunk:
                    lines, partial = _split(partial + chunk)
                    for item in lines:
                        yield item
                    continue
                # At the end of this file: is there a newer one?
                newer = self._next_after(f, paths, idx)
                if newer is not None:
                    if f is not None:
                        f.close()
                    f, partial = None, ""
                    paths, idx = newer
                    continue
                if not follow:
                    return
                if ended is not None and ended():
                    # Drain once more: the writer may have flushed its last lines.
                    chunk = f.read() if f is not None else ""
                    if not chunk:
                        return
                    lines, partial = _split(partial + chunk)
                    for item in lines:
                        yield item
                    continue
                await asyncio.sleep(poll)
        finally:
            if f is not None:
                f.close()

    def _next_after(self, f: object, paths: list[str], idx: int) -> tuple[list[str], int] | None:
        if idx + 1 < len(paths):
            return paths, idx + 1
        if f is None:
            fresh = self._paths()
            return (fresh, 0) if fresh else None
        cur_ino = os.fstat(f.fileno()).st_ino  # type: ignore[attr-defined]
        fresh = self._paths()
        for i, p in enumerate(fresh):
            try:
                if os.stat(p).st_ino == cur_ino:
                    return (fresh, i + 1) if i + 1 < len(fresh) else None
            except FileNotFoundError:
                continue
        # Our file is no longer listed (pruned while we read it): go on with the oldest kept.
        return (fresh, 0) if fresh else None


def _split(text: str) -> tuple[list[LogLine], str]:
    """Complete lines parsed, and the unfinished tail to keep for later."""
    parts = text.split("\n")
    tail = parts.pop()
    return [x for x in (parse_line(raw) for raw in parts) if x is not None], tail


def _read_all(path: str) -> list[LogLine]:
    try:
        with open(path, errors="replace") as f:
            return [x for x in (parse_line(raw) for raw in f.read().split("\n")) if x is not None]
    except FileNotFoundError:
        return []
