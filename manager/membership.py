"""Joining and node management on the managers.

- `GET /v1/ca`: the cluster's CA certificate. Served without a client
  certificate: a joining node checks it against the digest in its token
  before trusting anything else from us.
- `POST /v1/join`: token + CSR -> a node certificate (CN = new node id,
  OU = role) and the node's place in the store. A manager's Raft member is
  added by the leader's role reconciler (learner first, voter once caught up).
- `GET /v1/nodes`, `GET/POST/DELETE /v1/nodes/{ref}`, join tokens and
  their rotation: the node commands of the CLI.

The role reconciler runs on the leader and makes Raft membership follow the
nodes' desired roles, refusing changes that would lose quorum.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from api import codec
from api.objects import (
    Cluster,
    ManagerStatus,
    Meta,
    Node,
    NodeAvailability,
    NodeDescription,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeStatus,
    evolve,
)
from manager import store as store_ops
from manager.ca import CAError, RootCA, TokenError, make_token, parse_token
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore
from manager.tx import TxFailed, commit

from .controlapi.errors import HTTPError, bad_request, conflict, json_response, not_found
from .controlapi.server import _json_body

log = logging.getLogger(__name__)

RAFT_KEY = web.AppKey("m_raft", RaftNode)
STORE_KEY = web.AppKey("m_store", MemoryStore)


def cluster_of(store: MemoryStore) -> Cluster | None:
    cs = store.view().list("clusters")
    return cs[0] if cs else None


def join_tokens(cluster: Cluster) -> dict[str, str]:
    ca = cluster.root_ca
    return {"worker": make_token(ca.ca_cert, ca.worker_secret), "manager": make_token(ca.ca_cert, ca.manager_secret)}


def new_raft_id() -> int:
    return secrets.randbits(62) + 1


KEYFN_KEY = web.AppKey("m_secrets_key", object)


def _manager_secrets(request: web.Request, role: NodeRole) -> dict[str, Any]:
    """What only managers get: the cluster's secrets key (over mutual TLS)."""
    if role != NodeRole.MANAGER:
        return {}
    fn = request.app.get(KEYFN_KEY)
    key = fn() if fn is not None else None  # type: ignore[operator]
    import base64

    return {"secrets_key": base64.b64encode(key).decode()} if key else {}


def add_public_routes(app: web.Application, raft: RaftNode, store: MemoryStore, secrets_key: Any = None) -> None:
    """Routes that a node without a certificate may call (TCP port only)."""
    app[RAFT_KEY] = raft
    app[STORE_KEY] = store
    app[KEYFN_KEY] = secrets_key or (lambda: None)
    app.router.add_get("/v1/ca", get_ca)
    app.router.add_post("/v1/join", join)
    app.router.add_post("/v1/certs/renew", renew)


def add_node_routes(app: web.Application, raft: RaftNode, store: MemoryStore) -> None:
    app[RAFT_KEY] = raft
    app[STORE_KEY] = store
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_get("/v1/nodes/{ref}", get_node)
    app.router.add_post("/v1/nodes/{ref}/update", update_node)
    app.router.add_delete("/v1/nodes/{ref}", remove_node)
    app.router.add_get("/v1/join-tokens", get_tokens)
    app.router.add_post("/v1/join-tokens/rotate", rotate_token)


async def _barrier(request: web.Request) -> None:
    try:
        await request.app[RAFT_KEY].read_barrier()
    except RaftError as e:
        raise HTTPError(503, "unavailable", str(e)) from None


async def _commit(request: web.Request, ops: list[Any]) -> Any:
    try:
        return await commit(request.app[RAFT_KEY], request.app[STORE_KEY], ops)
    except TxFailed as e:
        raise conflict(f"{e} (changed concurrently; retry)") from None
    except RaftError as e:
        raise HTTPError(503, "unavailable", str(e)) from None


def _cluster(request: web.Request) -> Cluster:
    c = cluster_of(request.app[STORE_KEY])
    if c is None:
        raise HTTPError(503, "unavailable", "this manager has no cluster state yet")
    return c


async def get_ca(request: web.Request) -> web.Response:
    return json_response({"ca_cert": _cluster(request).root_ca.ca_cert})


async def join(request: web.Request) -> web.Response:
    body = await _json_body(request)
    token, csr = body.get("token"), body.get("csr")
    if not isinstance(token, str) or not isinstance(csr, str):
        raise bad_request("token and csr (PEM) are required")
    cluster = _cluster(request)
    try:
        tok = parse_token(token)
    except TokenError as e:
        raise bad_request(f"token: {e}", field="token") from None
    ca = cluster.root_ca
    if not tok.matches_ca(ca.ca_cert):
        raise HTTPError(403, "permission_denied", "the join token is for a different cluster (CA digest mismatch)")
    if hmac.compare_digest(tok.secret.encode(), ca.manager_secret.encode()):
        role = NodeRole.MANAGER
    elif hmac.compare_digest(tok.secret.encode(), ca.worker_secret.encode()):
        role = NodeRole.WORKER
    else:
        raise HTTPError(403, "permission_denied", "invalid join token: it was rotated or never valid")
    addr = body.get("advertise_addr") or ""
    if role == NodeRole.MANAGER and (not isinstance(addr, str) or ":" not in addr):
        raise bad_request("advertise_addr: a joining manager needs HOST:PORT", field="advertise_addr")
    try:
        desc = NodeDescription.model_validate(body.get("description") or {})
    except ValueError as e:
        raise bad_request(f"description: {e}", field="description") from None
    node_id = codec.new_id()
    try:
        root = RootCA.from_pem(ca.ca_cert, ca.ca_key)
        cert = root.issue(csr, node_id, role.value)
    except CAError as e:
        raise bad_request(f"csr: {e}", field="csr") from None
    now = time.time()
    node = Node(
        id=node_id, meta=Meta(created_at=now, updated_at=now),
        spec=NodeSpec(role=role), role=role, description=desc,
        status=NodeStatus(state=NodeState.UNKNOWN, addr=addr.rpartition(":")[0] if addr else ""),
        manager_status=ManagerStatus(raft_id=new_raft_id(), addr=addr) if role == NodeRole.MANAGER else None,
    )
    await _commit(request, [store_ops.Create("nodes", node)])
    managers = manager_addrs(request.app[STORE_KEY])
    log.info("node %s joined as %s", node_id, role.value)
    return json_response({
        "node_id": node_id, "role": role.value, "cert": cert, "ca_cert": ca.ca_cert,
        "cluster_id": cluster.id, "raft_id": node.manager_status.raft_id if node.manager_status else 0,
        "managers": managers, **_manager_secrets(request, role),
    }, 201)


async def renew(request: web.Request) -> web.Response:
    """A node's new certificate, for the role the cluster wants it to have.
    A node promoted to manager gets its Raft id and address recorded here
    (the leader's role reconciler then adds it to Raft)."""
    ident = request.get("orch.identity")
    if ident is None:
        raise HTTPError(401, "unauthenticated", "renewal needs the node's current certificate")
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("request body is not valid JSON") from None
    csr = body.get("csr") if isinstance(body, dict) else None
    if not isinstance(csr, str):
        raise bad_request("csr (PEM) is required", field="csr")
    await _barrier(request)
    store = request.app[STORE_KEY]
    node = store.view().get("nodes", ident.node_id)
    if node is None:
        raise HTTPError(403, "permission_denied", f"node {ident.node_id} is not part of this cluster")
    role = node.spec.role
    if role == NodeRole.MANAGER and node.manager_status is None:
        addr = body.get("advertise_addr")
        if not isinstance(addr, str) or ":" not in addr:
            raise bad_request("advertise_addr: a node becoming a manager needs HOST:PORT", field="advertise_addr")
        node = evolve(node, manager_status=ManagerStatus(raft_id=new_raft_id(), addr=addr))
        await _commit(request, [store_ops.Update("nodes", node)])
    cluster = _cluster(request)
    try:
        cert = RootCA.from_pem(cluster.root_ca.ca_cert, cluster.root_ca.ca_key).issue(csr, node.id, role.value)
    except CAError as e:
        raise bad_request(f"csr: {e}", field="csr") from None
    return json_response({"cert": cert, "role": role.value, "ca_cert": cluster.root_ca.ca_cert,
                          "raft_id": node.manager_status.raft_id if node.manager_status else 0,
                          "managers": manager_addrs(store), **_manager_secrets(request, role)})


def manager_addrs(store: MemoryStore) -> list[str]:
    return sorted(n.manager_status.addr for n in store.view().list("nodes")
                  if n.manager_status is not None and n.manager_status.addr)


# -- node management ---------------------------------------------------------


def _resolve_node(store: MemoryStore, ref: str) -> Node:
    view = store.view()
    n = view.get("nodes", ref)
    if n is not None:
        return n
    matches = [x for x in view.list("nodes")
               if x.spec.name == ref or x.description.hostname == ref or x.id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise bad_request(f"node reference {ref!r} is ambiguous: {len(matches)} nodes match")
    raise not_found(f"no node with id, name or hostname {ref!r}")


def node_json(n: Node, raft: RaftNode) -> dict[str, Any]:
    d = codec.to_json(n)
    if n.manager_status is not None:
        rid = n.manager_status.raft_id
        st = raft.conf_state
        d["manager_status"]["leader"] = rid == raft.lead
        d["manager_status"]["suffrage"] = (
            "voter" if rid in st.voters else "learner" if rid in st.learners else "none"
        )
        if rid == raft.id:
            d["manager_status"]["reachable"] = True
        else:
            ps = raft.transport.peer_stats().get(rid)
            d["manager_status"]["reachable"] = bool(ps and ps.connected)
    return d


async def list_nodes(request: web.Request) -> web.Response:
    await _barrier(request)
    raft = request.app[RAFT_KEY]
    return json_response([node_json(n, raft) for n in request.app[STORE_KEY].view().list("nodes")])


async def get_node(request: web.Request) -> web.Response:
    await _barrier(request)
    n = _resolve_node(request.app[STORE_KEY], request.match_info["ref"])
    return json_response(node_json(n, request.app[RAFT_KEY]))


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


async def update_node(request: web.Request) -> web.Response:
    body = await _json_body(request)
    unknown = set(body) - {"availability", "label_add", "label_rm", "role", "name", "force"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    await _barrier(request)
    store = request.app[STORE_KEY]
    raft = request.app[RAFT_KEY]
    n = _resolve_node(store, request.match_info["ref"])
    spec = n.spec
    changes: dict[str, Any] = {}
    if "availability" in body:
        try:
            changes["availability"] = NodeAvailability(body["availability"])
        except ValueError:
            raise bad_request("availability: must be active, pause or drain", field="availability") from None
    labels = dict(spec.labels)
    for kv in body.get("label_add") or []:
        if not isinstance(kv, str) or not kv:
            raise bad_request("label_add: a list of KEY=VALUE or KEY", field="label_add")
        k, _, v = kv.partition("=")
        labels[k] = v
    for k in body.get("label_rm") or []:
        if k not in labels:
            raise bad_request(f"label_rm: node has no label {k!r}", field="label_rm")
        del labels[k]
    changes["labels"] = labels
    if "name" in body:
        changes["name"] = body["name"]
    new_mgr = n.manager_status
    if "role" in body:
        try:
            role = NodeRole(body["role"])
        except ValueError:
            raise bad_request("role: must be worker or manager", field="role") from None
        if role == NodeRole.WORKER and n.spec.role == NodeRole.MANAGER and n.manager_status is not None:
            why = quorum_safe_without(raft, store, n.manager_status.raft_id)
            if why and not body.get("force"):
                raise conflict(f"refusing to demote {n.id}: {why} (use --force to do it anyway)")
        changes["role"] = role
    try:
        new_spec = NodeSpec.model_validate({**spec.model_dump(), **changes})
    except ValueError as e:
        raise bad_request(str(e)) from None
    new = evolve(n, spec=new_spec, manager_status=new_mgr)
    await _commit(request, [store_ops.Update("nodes", new)])
    n2 = store.view().get("nodes", n.id)
    return json_response(node_json(n2, raft))


async def remove_node(request: web.Request) -> web.Response:
    await _barrier(request)
    store = request.app[STORE_KEY]
    n = _resolve_node(store, request.match_info["ref"])
    force = request.query.get("force") in ("1", "true")
    if n.role == NodeRole.MANAGER or n.spec.role == NodeRole.MANAGER:
        raise conflict(f"node {n.id} is a manager: demote it first (orch node demote)")
    if n.status.state == NodeState.READY and not force:
        raise conflict(f"node {n.id} is READY: stop its daemon or `orch leave` on it first, or use --force")
    cluster = _cluster(request)
    new_cluster = evolve(cluster, removed_nodes=tuple(cluster.removed_nodes) + (n.id,))
    await _commit(request, [store_ops.Delete("nodes", n.id), store_ops.Update("clusters", new_cluster)])
    return json_response({"id": n.id, "removed": True})


async def get_tokens(request: web.Request) -> web.Response:
    await _barrier(request)
    return json_response(join_tokens(_cluster(request)))


async def rotate_token(request: web.Request) -> web.Response:
    role = request.query.get("role", "")
    if role not in ("worker", "manager"):
        raise bad_request("role: worker or manager", field="role")
    await _barrier(request)
    c = _cluster(request)
    field = f"root_ca__{role}_secret"
    new = evolve(c, **{field: secrets.token_hex(16)})
    await _commit(request, [store_ops.Update("clusters", new)])
    return json_response(join_tokens(cluster_of(request.app[STORE_KEY]) or new))


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
