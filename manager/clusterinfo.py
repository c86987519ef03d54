"""Cluster-wide facts read from a manager's store and Raft group, shared by
the control API, the manager process and the node daemon: the Cluster
object, the managers' addresses, join tokens, fresh Raft ids, and whether a
voter can leave without losing quorum."""

from __future__ import annotations

import secrets

from api.objects import Cluster
from pki import make_token
from manager.raft.driver import RaftNode
from manager.store import MemoryStore


def cluster_of(store: MemoryStore) -> Cluster | None:
    cs = store.view().list("clusters")
    return cs[0] if cs else None


def manager_addrs(store: MemoryStore) -> list[str]:
    return sorted(n.manager_status.addr for n in store.view().list("nodes")
                  if n.manager_status is not None and n.manager_status.addr)


def join_tokens(cluster: Cluster) -> dict[str, str]:
    ca = cluster.root_ca
    return {"worker": make_token(ca.ca_cert, ca.worker_secret), "manager": make_token(ca.ca_cert, ca.manager_secret)}


def new_raft_id() -> int:
    return secrets.randbits(62) + 1


def quorum_safe_without(raft: RaftNode, store: MemoryStore, raft_id: int) -> str | None:
    """Why removing voter `raft_id` would lose quorum, or None if it is safe."""
    voters = set(raft.conf_state.voters)
    if raft_id not in voters:
        return None
    remaining = voters - {raft_id}
    if not remaining:
        return "it is the last manager"
    stats = raft.transport.peer_stats()
    reachable = {rid for rid in remaining if rid == raft.id or (rid in stats and stats[rid].connected)}
    need = len(remaining) // 2 + 1
    if len(reachable) < need:
        return (f"the remaining {len(remaining)} managers would need {need} reachable for quorum "
                f"and only {len(reachable)} are")
    return None
