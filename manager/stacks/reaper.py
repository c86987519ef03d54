"""The stack reaper: a leader-only loop that removes what stacks gave up
once nothing uses it.

A deploy or `stack rm` deletes at once what nothing uses; a network tasks
are still on, or an old version of a secret that a task still mounts (or a
service could roll back to), waits in its stack's `garbage`. This loop
runs `plan.reap` whenever services, tasks or stacks change (and every
`idle` seconds), and commits its deletes; a stack being removed goes with
the last of them. Losing a race is harmless: the next pass decides again.
"""

from __future__ import annotations

import asyncio
import logging

from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.store.errors import WatchError
from manager.tx import TxFailed, commit

from .plan import reap

log = logging.getLogger(__name__)

TABLES = frozenset({"stacks", "services", "tasks"})


class StackReaper:
    """A `manager.leadership.Leader`."""

    def __init__(self, raft: RaftNode, store: MemoryStore, *, idle: float = 2.0) -> None:
        self.raft = raft
        self.store = store
        self.idle = idle
        self.removed = 0  # objects deleted, over all terms (for tests)

    async def lead(self) -> None:
        await self.raft.read_barrier()
        while True:
            watch = self.store.watch(TABLES)
            try:
                while True:
                    await self.run_once()
                    try:
                        async with asyncio.timeout(self.idle):
                            await watch.next_batch()
                        watch.poll()
                    except TimeoutError:
                        pass
            except WatchError:
                pass  # overflowed: start over with a new watch
            finally:
                watch.close()

    async def run_once(self) -> None:
        ops = reap(self.store.view())
        if not ops:
            return
        try:
            await commit(self.raft, self.store, ops)
            self.removed += sum(1 for op in ops if op.table != "stacks")
        except TxFailed as e:
            log.debug("stack reaper lost a race: %s", e)
        except RaftError as e:
            log.info("stack reaper write failed: %s", e)
            await asyncio.sleep(0.1)
