"""Control API routes: cluster status and Configs.

Reads are linearizable: each waits for a ReadIndex barrier, so a follower
never answers with state older than a write already acknowledged anywhere.
Writes become one store transaction = one Raft entry; a follower's proposal
is forwarded to the leader by Raft itself, and the caller is answered when
the entry has been applied on the node it asked.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError as PydanticValidationError

from api import codec
from api.errors import ValidationError
from api.objects import Config, ConfigSpec, Meta
from manager.raft.driver import NoLeader, NotLeader, RaftError, RaftNode, Stopped, Timeout
from manager import store as store_ops
from manager.store import MemoryStore

from .errors import (
    HTTPError,
    bad_request,
    conflict,
    error_middleware,
    json_response,
    not_found,
    unavailable,
)

MAX_BODY = 2 << 20

RAFT_KEY = web.AppKey("raft", RaftNode)
STORE_KEY = web.AppKey("store", MemoryStore)


def build_app(raft: RaftNode, store: MemoryStore, secrets_key: Any = None,
              resolve_image: Any = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    add_routes(app, raft, store, secrets_key, resolve_image)
    return app


def add_routes(app: web.Application, raft: RaftNode, store: MemoryStore,
               secrets_key: Any = None, resolve_image: Any = None) -> None:
    """The control API routes, on the manager's TCP app or the local socket's.
    `secrets_key()` gives the cluster's secrets key (None: no secrets here)."""
    app[RAFT_KEY] = raft
    app[STORE_KEY] = store
    app.router.add_get("/v1/cluster/status", cluster_status)
    app.router.add_post("/v1/cluster/members", add_member)
    app.router.add_delete("/v1/cluster/members/{id}", remove_member)
    app.router.add_get("/v1/configs", list_configs)
    app.router.add_post("/v1/configs", create_config)
    app.router.add_get("/v1/configs/{ref}", get_config)
    app.router.add_delete("/v1/configs/{ref}", delete_config)
    app.router.add_get("/v1/openapi.json", openapi)
    from .secrets import add_secret_routes
    from .services import add_service_routes

    add_service_routes(app, resolve_image)
    add_secret_routes(app, secrets_key or (lambda: None))


# -- helpers ---------------------------------------------------------------


def _raft_errors(e: RaftError) -> HTTPError:
    if isinstance(e, NotLeader):
        return unavailable(f"{e} (leader: {e.leader or 'unknown'})")
    if isinstance(e, (NoLeader, Stopped)):
        return unavailable(str(e))
    if isinstance(e, Timeout):
        return HTTPError(504, "timeout", str(e))
    return unavailable(str(e))


async def _barrier(request: web.Request) -> None:
    raft = request.app[RAFT_KEY]
    try:
        await raft.read_barrier()
    except RaftError as e:
        raise _raft_errors(e) from None


async def _commit(request: web.Request, ops: list[Any]) -> Any:
    raft = request.app[RAFT_KEY]
    store = request.app[STORE_KEY]
    try:
        payload = store.encode_tx(ops)
    except store_ops.TxTooLarge as e:
        raise HTTPError(413, "too_large", str(e)) from None
    except ValidationError as e:
        raise bad_request(str(e), field=e.errors[0][0] if e.errors else None) from None
    try:
        result = await raft.propose(payload)
    except RaftError as e:
        raise _raft_errors(e) from None
    if not result.ok:
        err = result.error
        if isinstance(err, store_ops.NotFound):
            raise not_found(str(err))
        if isinstance(err, (store_ops.Conflict, store_ops.AlreadyExists)):
            raise conflict(str(err))
        raise bad_request(str(err))
    return result


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def _resolve(store: MemoryStore, table: str, ref: str) -> Any:
    """Find an object by full id, then by name, then by unique id prefix."""
    view = store.view()
    obj = view.get(table, ref)
    if obj is not None:
        return obj
    obj = view.get_by_name(table, ref)
    if obj is not None:
        return obj
    matches = [o for o in view.list(table) if o.id.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    kind = table.rstrip("s")
    if len(matches) > 1:
        raise bad_request(f"{kind} reference {ref!r} is ambiguous: {len(matches)} ids start with it")
    raise not_found(f"no {kind} with id or name {ref!r}")


# -- handlers ----------------------------------------------------------------


async def cluster_status(request: web.Request) -> web.Response:
    raft = request.app[RAFT_KEY]
    store = request.app[STORE_KEY]
    st = raft.status()
    return json_response({"raft": st, "store": {"index": store.index}})


async def add_member(request: web.Request) -> web.Response:
    """Add a manager: it joins as a learner and becomes a voter once caught up."""
    body = await _json_body(request)
    nid, addr = body.get("id"), body.get("addr")
    if not isinstance(nid, int) or isinstance(nid, bool) or nid < 1:
        raise bad_request("id: must be an integer >= 1", field="id")
    if not isinstance(addr, str) or ":" not in addr:
        raise bad_request("addr: must be HOST:PORT", field="addr")
    raft = request.app[RAFT_KEY]
    if nid in raft.conf_state.voters:
        raise conflict(f"node {nid} is already a voter")
    try:
        await raft.add_member(nid, addr)
    except RaftError as e:
        raise _raft_errors(e) from None
    return json_response(raft.status(), 201)


async def remove_member(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise bad_request(f"member id {raw!r} is not a number", field="id")
    raft = request.app[RAFT_KEY]
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
        raise _raft_errors(e) from None
    return json_response(raft.status())


async def list_configs(request: web.Request) -> web.Response:
    await _barrier(request)
    store = request.app[STORE_KEY]
    items = [codec.to_json(c) for c in store.view().list("configs")]
    return json_response(items)


async def get_config(request: web.Request) -> web.Response:
    await _barrier(request)
    obj = _resolve(request.app[STORE_KEY], "configs", request.match_info["ref"])
    return json_response(codec.to_json(obj))


async def create_config(request: web.Request) -> web.Response:
    body = await _json_body(request)
    unknown = set(body) - {"name", "labels", "data"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    data = body.get("data", "")
    if not isinstance(data, str):
        raise bad_request("data: must be a base64 string", field="data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("data: not valid base64", field="data") from None
    try:
        spec = ConfigSpec(name=body.get("name"), labels=body.get("labels") or {}, data=raw)
    except PydanticValidationError as e:
        ve = ValidationError.from_pydantic(e)
        raise bad_request(str(ve), field=ve.errors[0][0] if ve.errors else None) from None
    now = time.time()
    obj = Config(id=codec.new_id(), meta=Meta(created_at=now, updated_at=now), spec=spec)
    result = await _commit(request, [store_ops.Create("configs", obj)])
    # The applied event carries the stored object with its final meta.
    return json_response(codec.to_json(result.events[0].obj), 201)


async def delete_config(request: web.Request) -> web.Response:
    await _barrier(request)
    obj = _resolve(request.app[STORE_KEY], "configs", request.match_info["ref"])
    from .secrets import users_of

    users = users_of(request.app[STORE_KEY], "configs", obj.id)
    if users:
        raise conflict(f"config {obj.spec.name} is in use by service(s) {', '.join(users)}")
    await _commit(request, [store_ops.Delete("configs", obj.id, expect_version=obj.meta.version)])
    return web.Response(status=204)


async def openapi(request: web.Request) -> web.Response:
    from .openapi import document

    return json_response(document())
