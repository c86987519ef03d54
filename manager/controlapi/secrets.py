"""Control API: secrets. Payloads are encrypted before they enter the store
and never leave it through the API (responses carry metadata only)."""

from __future__ import annotations

import time

from aiohttp import web

from api import codec
from api.objects import Meta, Secret, SecretSpec
from manager import store as store_ops
from pki.secretbox import seal

from .common import Route, barrier, commit, json_body, manager, named_blob, resolve, users_of
from .errors import HTTPError, conflict, json_response


async def list_secrets(request: web.Request) -> web.Response:
    m = await barrier(request)
    return json_response([codec.to_json(s) for s in m.store.view().list("secrets")])


async def get_secret(request: web.Request) -> web.Response:
    m = await barrier(request)
    return json_response(codec.to_json(resolve(m.store, "secrets", request.match_info["ref"])))


async def create_secret(request: web.Request) -> web.Response:
    key = manager(request).secrets_key()
    if key is None:
        raise HTTPError(409, "no_key", "secrets need a cluster made with `orch init` (no cluster secrets key here)")
    spec, raw = named_blob(await json_body(request), SecretSpec, required=True)  # validates the plaintext
    sid = codec.new_id()
    now = time.time()
    obj = Secret(id=sid, meta=Meta(created_at=now, updated_at=now),
                 spec=spec.model_copy(update={"data": seal(key, sid, raw)}))
    result = await commit(request, [store_ops.Create("secrets", obj)])
    return json_response(codec.to_json(result.events[0].obj), 201)


async def delete_secret(request: web.Request) -> web.Response:
    m = await barrier(request)
    obj = resolve(m.store, "secrets", request.match_info["ref"])
    users = users_of(m.store, "secrets", obj.id)
    if users:
        raise conflict(f"secret {obj.spec.name} is in use by service(s) {', '.join(users)}")
    await commit(request, [store_ops.Delete("secrets", obj.id, expect_version=obj.meta.version)])
    return web.Response(status=204)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/secrets", list_secrets),
    Route("POST", "/v1/secrets", create_secret),
    Route("GET", "/v1/secrets/{ref}", get_secret),
    Route("DELETE", "/v1/secrets/{ref}", delete_secret),
)
