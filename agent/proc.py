"""Child processes for the engine, spawned from worker threads.

The engine starts several short-lived processes per container (mount,
conmon, runc). Spawning them with `subprocess` from a thread uses vfork /
posix_spawn whatever event loop runs the daemon; uvloop's own spawn forks
the whole daemon (tens of MB of page tables) for every child, which made
100 concurrent starts take ~60% longer. The threads only wait; the event
loop never blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="orch-proc")


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


class Timeout(Exception):
    pass


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn)


async def run(args: Sequence[str], *, timeout: float = 30.0, cwd: str | None = None, merge_stderr: bool = False,
              on_timeout: Callable[[], None] | None = None) -> Result:
    """Run to completion, capturing output. On timeout (or cancellation) the
    child is killed (after `on_timeout`, e.g. to kill what it started) and
    Timeout is raised (or the cancellation propagates)."""
    procs: list[subprocess.Popen[bytes]] = []

    def go() -> Result:
        p = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, cwd=cwd)
        procs.append(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            if on_timeout is not None:
                on_timeout()
            p.kill()
            p.communicate()
            raise Timeout(f"{os.path.basename(args[0])} timed out after {timeout:g} s") from None
        return Result(p.returncode, out, err or b"")

    try:
        return await in_thread(go)
    except asyncio.CancelledError:
        if on_timeout is not None:
            on_timeout()
        for p in procs:
            if p.poll() is None:
                p.kill()
        raise
