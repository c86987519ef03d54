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

Most changes are to tasks and services, and a pass after them is partial:
it reconciles only the services whose tasks or spec changed since (read
from the store's indexes), plus those with tasks waiting to be placed, so
its cost follows what changed, not the size of the store. A task's status
report that cannot change any decision (`reconcile.quiet_task_change`: a
running start, outside of updates) does not count as a change. A full pass
(every service, every task) follows a change to anything else (a node as
the passes see it, the cluster, networks...), a write that failed, a
wake-up time coming due, and at least every `full_every` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from api.probe import NULL_PROBE, Probe
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.store.errors import WatchError
from manager.store.watch import Event, EventAction
from manager.tx import TxFailed, commit

from manager.allocator.stage import TABLES as ALLOCATOR_TABLES
from manager.allocator.stage import NetworkStage

from .placement import PlacementCache
from .reconcile import plan, quiet_task_change, same_to_orchestrator

log = logging.getLogger(__name__)

TABLES = frozenset({"services", "tasks", "nodes", "clusters"}) | ALLOCATOR_TABLES


class Orchestrator:
    """A `manager.leadership.Leader`: `lead()` runs while this manager leads."""

    def __init__(self, raft: RaftNode, store: MemoryStore, *, batch: int = 200, idle: float = 1.0,
                 full_every: float = 30.0, probe: Probe = NULL_PROBE) -> None:
        self.raft = raft
        self.probe = probe
        self.store = store
        self.batch = batch
        self.idle = idle  # a pass at least this often while leading (monitor windows, clocks)
        self.full_every = full_every  # a full pass at least this often (seconds)
        self.passes = 0
        self.full_passes = 0
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
        # Services (ids) changed since the pass that last covered them; None:
        # the next pass must be a full one.
        changed: set[str] | None = None
        wake_at: float | None = None  # the earliest time a pass asked to look again
        last_full = 0.0

        def take(events: Sequence[Event]) -> None:
            nonlocal changed
            self.allocator.observe(events)  # releases of what the store no longer holds
            view = self.store.view()
            for ev in events:
                if changed is None:
                    return
                if ev.table == "tasks":
                    if ev.obj.service_id not in changed and not (
                            ev.action is EventAction.UPDATE and quiet_task_change(ev.old, ev.obj, view)):
                        changed.add(ev.obj.service_id)
                elif ev.table == "services":
                    changed.add(ev.obj.id)
                elif (ev.table == "nodes" and ev.action is EventAction.UPDATE
                      and same_to_orchestrator(ev.old, ev.obj)):
                    continue  # a write the passes cannot tell from none (a session's registration)
                else:
                    changed = None

        try:
            while True:
                t0 = time.monotonic()
                take(watch.poll())
                if wake_at is not None and wake_at <= time.time():
                    changed = None
                if changed is not None and t0 - last_full >= self.full_every:
                    changed = None
                full = changed is None
                p = plan(self.store.view(), allocator=self.allocator, placements=self.placements,
                         services_changed=changed)
                self.passes += 1
                if full:
                    self.full_passes += 1
                    last_full = t0
                    wake_at = p.wake_at
                elif p.wake_at is not None and (wake_at is None or p.wake_at < wake_at):
                    wake_at = p.wake_at
                changed = set()
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
                    # Memory may hold allocations the store never got, and
                    # services whose writes were dropped may not change again.
                    self.allocator.reset()
                    changed = None
                if p.ops:
                    log.debug("pass %d (%s): %d writes in %.1f ms", self.passes, "full" if full else "partial",
                              len(p.ops), (time.monotonic() - t0) * 1000)
                    if ok:
                        continue  # our own writes may enable more work: look again at once
                    await asyncio.sleep(0.05)
                timeout = self.idle
                if wake_at is not None:
                    timeout = max(0.01, min(timeout, wake_at - time.time()))
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a
                # cancellation that arrives as the watch fires, and then
                # step-down would never end this loop.
                try:
                    async with asyncio.timeout(timeout):
                        take(await watch.next_batch())
                    take(watch.poll())  # coalesce whatever else is queued
                except TimeoutError:
                    pass
        except WatchError:
            pass
        finally:
            watch.close()
