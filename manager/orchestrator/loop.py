"""The leader's orchestration loop.

While this manager leads, it runs a reconciliation pass (`reconcile.plan`)
whenever the store changes (services, tasks, nodes, the cluster) or a timer
it asked for comes due (restart delays, update monitors), and commits the
pass's writes in batches of at most `batch` operations. Passes are cheap
and idempotent: a batch that loses a race (version conflict) is simply
decided again on the next pass. Losing leadership stops the loop; the next
leader starts from the store, which holds all the state there is.
"""

from __future__ import annotations

import asyncio
import logging
import time

from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.store.errors import WatchError
from manager.tx import TxFailed, commit

from .reconcile import plan

log = logging.getLogger(__name__)

TABLES = frozenset({"services", "tasks", "nodes", "clusters"})


class Orchestrator:
    def __init__(self, raft: RaftNode, store: MemoryStore, *, batch: int = 200, idle: float = 1.0) -> None:
        self.raft = raft
        self.store = store
        self.batch = batch
        self.idle = idle  # a pass at least this often while leading (monitor windows, clocks)
        self.passes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                if not self.raft.is_leader:
                    await asyncio.sleep(0.1)
                    continue
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("orchestrator failed; restarting it")
                await asyncio.sleep(0.5)

    async def _lead(self) -> None:
        # Everything committed before we took over must be applied first, or
        # a pass could undo writes of the previous leader it has not seen.
        await self.raft.read_barrier()
        watch = self.store.watch(TABLES)
        try:
            while self.raft.is_leader:
                t0 = time.monotonic()
                p = plan(self.store.view())
                self.passes += 1
                ok = True
                for i in range(0, len(p.ops), self.batch):
                    try:
                        await commit(self.raft, self.store, p.ops[i:i + self.batch])
                    except TxFailed as e:
                        ok = False
                        log.debug("orchestrator batch lost a race: %s", e)
                    except RaftError as e:
                        ok = False
                        log.info("orchestrator write failed: %s", e)
                        break
                if p.ops:
                    log.debug("pass %d: %d writes in %.1f ms", self.passes, len(p.ops),
                              (time.monotonic() - t0) * 1000)
                    if ok:
                        continue  # our own writes may enable more work: look again at once
                    await asyncio.sleep(0.05)
                timeout = self.idle
                if p.wake_at is not None:
                    timeout = max(0.01, min(timeout, p.wake_at - time.time()))
                try:
                    await asyncio.wait_for(watch.next_batch(), timeout)
                    watch.poll()  # coalesce whatever else is queued
                except asyncio.TimeoutError:
                    pass
        except WatchError:
            pass  # overflowed: start over with a fresh watch
        finally:
            watch.close()
