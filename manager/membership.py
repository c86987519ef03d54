"""Role reconciliation on the leader: Raft membership follows the nodes'
desired roles, refusing changes that would lose quorum.

The HTTP side of membership (join, certificate renewal, node commands, join
tokens) is in `manager.controlapi.join` and `manager.controlapi.nodes`; the
cluster-wide queries they share with the daemon are in `manager.clusterinfo`.
"""

from __future__ import annotations

import asyncio
import logging

from api.objects import NodeRole, NodeState, evolve
from manager import store as store_ops
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.tx import TxFailed, commit

log = logging.getLogger(__name__)


# -- role reconciliation (leader only) -----------------------------------------


class RoleManager:
    """Makes Raft membership follow the managers in the store: a manager
    node's raft id is added (learner, then voter once caught up); a node
    demoted to worker is removed from Raft and its observed role updated.
    A `manager.leadership.Leader`: `lead()` runs while this manager leads."""

    def __init__(self, raft: RaftNode, store: MemoryStore, interval: float = 0.5) -> None:
        self.raft = raft
        self.store = store
        self.interval = interval

    async def lead(self) -> None:
        # Conf changes are not store events, so this is a periodic pass.
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reconcile()
            except (RaftError, TxFailed) as e:
                log.info("role reconciliation: %s", e)  # expected now and then; the next pass retries

    async def reconcile(self) -> None:
        cs = self.raft.conf_state
        members = set(cs.voters) | set(cs.learners)
        for n in self.store.view().list("nodes"):
            ms = n.manager_status
            if ms is None:
                continue
            if n.spec.role == NodeRole.MANAGER and ms.raft_id not in cs.voters:
                if n.status.state == NodeState.DOWN and ms.raft_id not in members:
                    continue  # wait until the node is up to add it
                await self.raft.add_member(ms.raft_id, ms.addr, timeout=20)
            if n.spec.role == NodeRole.MANAGER and ms.raft_id in self.raft.conf_state.voters \
                    and n.role != NodeRole.MANAGER:
                fresh = self.store.view().get("nodes", n.id)
                if fresh is not None:
                    await commit(self.raft, self.store, [store_ops.Update("nodes", evolve(fresh, role=NodeRole.MANAGER))])
            elif n.spec.role == NodeRole.WORKER:
                if ms.raft_id in members:
                    if ms.raft_id == self.raft.id:
                        # Demoting the leader: hand leadership over first.
                        others = [v for v in cs.voters if v != self.raft.id]
                        if others:
                            await self.raft.transfer_leadership(others[0])
                        return
                    await self.raft.remove_member(ms.raft_id)
                fresh = self.store.view().get("nodes", n.id)
                if fresh is not None:
                    await commit(self.raft, self.store, [store_ops.Update(
                        "nodes", evolve(fresh, role=NodeRole.WORKER, manager_status=None))])
