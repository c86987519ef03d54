"""Control API: configs (payloads stored as given, readable by the services
that mount them)."""

from __future__ import annotations

import time

from aiohttp import web

from api import codec
from api.objects import Config, ConfigSpec, Meta
from manager import store as store_ops

from .common import Route, barrier, commit, json_body, named_blob, resolve, users_of
from .errors import conflict, json_response


async def list_configs(request: web.Request) -> web.Response:
    m = await barrier(request)
    return json_response([codec.to_json(c) for c in m.store.view().list("configs")])


async def get_config(request: web.Request) -> web.Response:
    m = await barrier(request)
    return json_response(codec.to_json(resolve(m.store, "configs", request.match_info["ref"])))


async def create_config(request: web.Request) -> web.Response:
    spec, _ = named_blob(await json_body(request), ConfigSpec, required=False)
    now = time.time()
    obj = Config(id=codec.new_id(), meta=Meta(created_at=now, updated_at=now), spec=spec)
    result = await commit(request, [store_ops.Create("configs", obj)])
    # The applied event carries the stored object with its final meta.
    return json_response(codec.to_json(result.events[0].obj), 201)


async def delete_config(request: web.Request) -> web.Response:
    m = await barrier(request)
    obj = resolve(m.store, "configs", request.match_info["ref"])
    users = users_of(m.store, "configs", obj.id)
    if users:
        raise conflict(f"config {obj.spec.name} is in use by service(s) {', '.join(users)}")
    await commit(request, [store_ops.Delete("configs", obj.id, expect_version=obj.meta.version)])
    return web.Response(status=204)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/configs", list_configs),
    Route("POST", "/v1/configs", create_config),
    Route("GET", "/v1/configs/{ref}", get_config),
    Route("DELETE", "/v1/configs/{ref}", delete_config),
)
