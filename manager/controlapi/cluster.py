"""Control API: the cluster's Raft group, its status and its members."""

from __future__ import annotations

from aiohttp import web

from manager.raft.driver import RaftError

from .common import Route, json_body, manager
from .errors import bad_request, conflict, http_error, json_response, not_found


async def cluster_status(request: web.Request) -> web.Response:
    m = manager(request)
    return json_response({"raft": m.raft.status(), "store": {"index": m.store.index}})


async def add_member(request: web.Request) -> web.Response:
    """Add a manager: it joins as a learner and becomes a voter once caught up."""
    body = await json_body(request)
    nid, addr = body.get("id"), body.get("addr")
    if not isinstance(nid, int) or isinstance(nid, bool) or nid < 1:
        raise bad_request("id: must be an integer >= 1", field="id")
    if not isinstance(addr, str) or ":" not in addr:
        raise bad_request("addr: must be HOST:PORT", field="addr")
    raft = manager(request).raft
    if nid in raft.conf_state.voters:
        raise conflict(f"node {nid} is already a voter")
    try:
        await raft.add_member(nid, addr)
    except RaftError as e:
        raise http_error(e) from None
    return json_response(raft.status(), 201)


async def remove_member(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise bad_request(f"member id {raw!r} is not a number", field="id")
    raft = manager(request).raft
    nid = int(raw)
    members = set(raft.conf_state.voters) | set(raft.conf_state.learners)
    if nid not in members:
        raise not_found(f"no manager with id {nid}")
    voters = set(raft.conf_state.voters) - {nid}
    if nid in raft.conf_state.voters and not voters:
        raise conflict("refusing to remove the last voter")
    try:
        await raft.remove_member(nid)
    except RaftError as e:
        raise http_error(e) from None
    return json_response(raft.status())


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/cluster/status", cluster_status),
    Route("POST", "/v1/cluster/members", add_member),
    Route("DELETE", "/v1/cluster/members/{id}", remove_member),
)
