"""A cluster's first objects in the store, written by the manager that
founds it, and the rewrite that makes a surviving manager the only one.

The node daemon owns membership (certificates, state files, starting and
stopping its manager); these functions are the store side of it, called
once the daemon's manager leads:

- `create_cluster` (`orch init`): the Cluster object (CA certificate and
  key, one join secret per role), this node as a manager, and the
  `ingress` network (the routing mesh's; the leader's allocator gives it a
  VNI and a subnet from the cluster's address pool), in one transaction.
- `force_new_cluster` (`orch init --force-new-cluster`): every other
  manager is demoted to a worker in the store, since the Raft group now
  has this member only (they come back by a join or a promotion).

Both return the cluster's join tokens, what `orch init` prints.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from api import codec
from api.objects import (
    AddressPoolSpec,
    Cluster,
    ManagerStatus,
    Meta,
    Network,
    NetworkSpec,
    Node,
    NodeDescription,
    NodeRole,
    NodeSpec,
    RootCAState,
    evolve,
)
from manager import store as store_ops
from manager.clusterinfo import cluster_of, join_tokens
from manager.raft.driver import RaftNode
from manager.store import MemoryStore
from manager.tx import commit
from pki import RootCA


async def create_cluster(raft: RaftNode, store: MemoryStore, *, cluster_id: str, node_id: str, raft_id: int,
                         root: RootCA, advertise_addr: str, description: dict[str, Any],
                         default_addr_pool: AddressPoolSpec | None = None) -> dict[str, str]:
    """Write a new cluster's Cluster object and its first Node (this
    manager, described by `description` as `describe_host` makes it)."""
    now = time.time()
    cluster = Cluster(id=cluster_id, meta=Meta(created_at=now, updated_at=now),
                      root_ca=RootCAState(ca_cert=root.cert_pem, ca_key=root.key_pem.encode(),
                                          worker_secret=secrets.token_hex(16),
                                          manager_secret=secrets.token_hex(16)),
                      default_addr_pool=default_addr_pool or AddressPoolSpec())
    node = Node(id=node_id, meta=Meta(created_at=now, updated_at=now),
                spec=NodeSpec(role=NodeRole.MANAGER), role=NodeRole.MANAGER,
                description=NodeDescription.model_validate(description),
                manager_status=ManagerStatus(raft_id=raft_id, addr=advertise_addr))
    await commit(raft, store, [store_ops.Create("clusters", cluster), store_ops.Create("nodes", node),
                               store_ops.Create("networks", ingress_network(now))])
    return join_tokens(cluster)


INGRESS_NAME = "ingress"


def ingress_network(now: float) -> Network:
    """The network a new cluster publishes ports over, as
    Swarm's: overlay, not attachable, a subnet from the address pool."""
    return Network(id=codec.new_id(), meta=Meta(created_at=now, updated_at=now),
                   spec=NetworkSpec(name=INGRESS_NAME, ingress=True))


async def force_new_cluster(raft: RaftNode, store: MemoryStore, *, node_id: str) -> dict[str, str]:
    """Demote every manager but `node_id` (this one) in the store."""
    ops = [store_ops.Update("nodes", evolve(n, spec__role=NodeRole.WORKER, role=NodeRole.WORKER,
                                            manager_status=None))
           for n in store.view().list("nodes")
           if n.id != node_id and n.manager_status is not None]
    if ops:
        await commit(raft, store, ops)
    c = cluster_of(store)
    return join_tokens(c) if c else {}
