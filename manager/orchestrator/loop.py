"""The leader's orchestration loop.

While this manager leads (`lead()`, started and cancelled by the leadership
supervisor), it runs a reconciliation pass (`reconcile.plan`)
whenever the store changes (services, tasks, nodes, the cluster) or a timer
it asked for comes due (restart delays, update monitors), and commits the
pass's writes in batches of at most `batch` operations. Passes are cheap
and idempotent: a batch that loses a race (version conflict) is simply
decided again on the next pass. Losing leadership cancels the loop; the
next leader starts from the store, which holds all the state there is. A
failure is the supervisor's to log and restart.
"""

from __future__ import annotations

import asyncio
import logging
import time

from api.probe import NULL_PROBE, Probe
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.store.errors import WatchError
from manager.tx import TxFailed, commit

from manager.allocator.stage import TABLES as ALLOCATOR_TABLES
from manager.allocator.stage import NetworkStage

from .placement import PlacementCache
from .reconcile import plan

log = logging.getLogger(__name__)

TABLES = frozenset({"services", "tasks", "nodes", "clusters"}) | ALLOCATOR_TABLES


class Orchestrator:
    """A `manager.leadership.Leader`: `lead()` runs while this manager leads."""

    def __init__(self, raft: RaftNode, store: MemoryStore, *, batch: int = 200, idle: float = 1.0,
                 probe: Probe = NULL_PROBE) -> None:
        self.raft = raft
        self.probe = probe
        self.store = store
        self.batch = batch
        self.idle = idle  # a pass at least this often while leading (monitor windows, clocks)
        self.passes = 0
        # The allocation stage (networks, VIPs, task addresses) and the parsed
        # placements live for one term: a new term starts from the store.
        self.allocator = NetworkStage()
        self.placements = PlacementCache()

    async def lead(self) -> None:
        self.allocator = NetworkStage()
        self.placements = PlacementCache()
        # Everything committed before we took over must be applied first, or
        # a pass could undo writes of the previous leader it has not seen.
        await self.raft.read_barrier()
        while True:
            await self._follow()  # returns when its watch overflowed: start over with a fresh one
            self.allocator.reset()  # it missed events (releases): rebuild from the store

    async def _follow(self) -> None:
        watch = self.store.watch(TABLES)
        try:
            while True:
                t0 = time.monotonic()
                self.allocator.observe(watch.poll())  # releases of what the store no longer holds
                p = plan(self.store.view(), allocator=self.allocator, placements=self.placements)
                self.passes += 1
                ok = True
                uncertain = False
                for i in range(0, len(p.ops), self.batch):
                    try:
                        await commit(self.raft, self.store, p.ops[i:i + self.batch])
                    except TxFailed as e:
                        ok = False
                        log.debug("orchestrator batch lost a race: %s", e)
                    except RaftError as e:
                        ok = False
                        uncertain = True
                        log.info("orchestrator write failed: %s", e)
                    if not ok:
                        # The rest of the pass was decided together with this
                        # batch (a network's allocation, then its tasks'
                        # addresses): decide it again from the store.
                        break
                self.probe.reconcile_pass(time.monotonic() - t0)
                if uncertain:
                    # It may still commit: read everything that did before
                    # deciding (and allocating) again.
                    try:
                        await self.raft.read_barrier()
                    except RaftError as e:
                        log.info("orchestrator read barrier failed: %s", e)
                        await asyncio.sleep(0.1)
                if not ok:
                    # Memory may hold allocations the store never got.
                    self.allocator.reset()
                if p.ops:
                    log.debug("pass %d: %d writes in %.1f ms", self.passes, len(p.ops),
                              (time.monotonic() - t0) * 1000)
                    if ok:
                        continue  # our own writes may enable more work: look again at once
                    await asyncio.sleep(0.05)
                timeout = self.idle
                if p.wake_at is not None:
                    timeout = max(0.01, min(timeout, p.wake_at - time.time()))
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a
                # cancellation that arrives as the watch fires, and then
                # step-down would never end this loop.
                try:
                    async with asyncio.timeout(timeout):
                        self.allocator.observe(await watch.next_batch())
                    self.allocator.observe(watch.poll())  # coalesce whatever else is queued
                except TimeoutError:
                    pass
        except WatchError:
            pass
        finally:
            watch.close()
