"""Control API: the nodes of the cluster (`orch node ls/inspect/update/
promote/demote/rm`). A role change is only recorded here; the leader's role
reconciler (manager.membership) makes Raft membership follow it."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError as PydanticValidationError

from api import codec
from api.objects import Node, NodeAvailability, NodeRole, NodeSpec, NodeState, evolve
from manager import store as store_ops
from manager.clusterinfo import quorum_safe_without
from manager.raft.driver import RaftNode
from manager.store import MemoryStore

from .common import Route, barrier, cluster_state, commit, json_body
from .errors import bad_request, conflict, http_error, json_response, not_found


def resolve_node(store: MemoryStore, ref: str) -> Node:
    """A node by full id, then by name, hostname or unique id prefix."""
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
    m = await barrier(request)
    return json_response([node_json(n, m.raft) for n in m.store.view().list("nodes")])


async def get_node(request: web.Request) -> web.Response:
    m = await barrier(request)
    n = resolve_node(m.store, request.match_info["ref"])
    return json_response(node_json(n, m.raft))


async def update_node(request: web.Request) -> web.Response:
    body = await json_body(request)
    unknown = set(body) - {"availability", "label_add", "label_rm", "role", "name", "force"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    m = await barrier(request)
    store, raft = m.store, m.raft
    n = resolve_node(store, request.match_info["ref"])
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
    except PydanticValidationError as e:
        raise http_error(e) from None
    new = evolve(n, spec=new_spec, manager_status=new_mgr)
    await commit(request, [store_ops.Update("nodes", new)])
    n2 = store.view().get("nodes", n.id)
    return json_response(node_json(n2, raft))


async def remove_node(request: web.Request) -> web.Response:
    m = await barrier(request)
    n = resolve_node(m.store, request.match_info["ref"])
    force = request.query.get("force") in ("1", "true")
    if n.role == NodeRole.MANAGER or n.spec.role == NodeRole.MANAGER:
        raise conflict(f"node {n.id} is a manager: demote it first (orch node demote)")
    if n.status.state == NodeState.READY and not force:
        raise conflict(f"node {n.id} is READY: stop its daemon or `orch leave` on it first, or use --force")
    cluster = cluster_state(m.store)
    new_cluster = evolve(cluster, removed_nodes=tuple(cluster.removed_nodes) + (n.id,))
    await commit(request, [store_ops.Delete("nodes", n.id), store_ops.Update("clusters", new_cluster)])
    return json_response({"id": n.id, "removed": True})


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/nodes", list_nodes),
    Route("GET", "/v1/nodes/{ref}", get_node),
    Route("POST", "/v1/nodes/{ref}/update", update_node),
    Route("DELETE", "/v1/nodes/{ref}", remove_node),
)
