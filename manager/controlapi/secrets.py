"""Control API: secrets. Payloads are encrypted before they enter the store
and never leave it through the API (responses carry metadata only)."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable

from aiohttp import web
from pydantic import ValidationError as PydanticValidationError

from api import codec
from api.errors import ValidationError
from api.objects import Meta, Secret, SecretSpec
from manager import store as store_ops
from pki.secretbox import seal

from .errors import HTTPError, bad_request, conflict, json_response
from .server import STORE_KEY, _barrier, _commit, _json_body, _resolve

SECRETS_KEY = web.AppKey("secrets_key", object)


def add_secret_routes(app: web.Application, key: Callable[[], bytes | None]) -> None:
    app[SECRETS_KEY] = key
    app.router.add_get("/v1/secrets", list_secrets)
    app.router.add_post("/v1/secrets", create_secret)
    app.router.add_get("/v1/secrets/{ref}", get_secret)
    app.router.add_delete("/v1/secrets/{ref}", delete_secret)


def users_of(store: object, table: str, obj_id: str) -> list[str]:
    """Names of the services that reference a secret or config."""
    out = []
    for s in store.view().list("services"):  # type: ignore[attr-defined]
        c = s.spec.task.container
        refs = c.secrets if table == "secrets" else c.configs
        if any((r.secret_id if table == "secrets" else r.config_id) == obj_id for r in refs):
            out.append(s.spec.name)
    return sorted(out)


async def list_secrets(request: web.Request) -> web.Response:
    await _barrier(request)
    return json_response([codec.to_json(s) for s in request.app[STORE_KEY].view().list("secrets")])


async def get_secret(request: web.Request) -> web.Response:
    await _barrier(request)
    return json_response(codec.to_json(_resolve(request.app[STORE_KEY], "secrets", request.match_info["ref"])))


async def create_secret(request: web.Request) -> web.Response:
    key = request.app[SECRETS_KEY]()  # type: ignore[operator]
    if key is None:
        raise HTTPError(409, "no_key", "secrets need a cluster made with `orch init` (no cluster secrets key here)")
    body = await _json_body(request)
    unknown = set(body) - {"name", "labels", "data"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    data = body.get("data")
    if not isinstance(data, str):
        raise bad_request("data: required, a base64 string", field="data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("data: not valid base64", field="data") from None
    try:
        SecretSpec(name=body.get("name"), labels=body.get("labels") or {}, data=raw)  # validate the plaintext
    except PydanticValidationError as e:
        ve = ValidationError.from_pydantic(e)
        raise bad_request(str(ve), field=ve.errors[0][0] if ve.errors else None) from None
    sid = codec.new_id()
    now = time.time()
    obj = Secret(id=sid, meta=Meta(created_at=now, updated_at=now),
                 spec=SecretSpec(name=body["name"], labels=body.get("labels") or {}, data=seal(key, sid, raw)))
    result = await _commit(request, [store_ops.Create("secrets", obj)])
    return json_response(codec.to_json(result.events[0].obj), 201)


async def delete_secret(request: web.Request) -> web.Response:
    await _barrier(request)
    store = request.app[STORE_KEY]
    obj = _resolve(store, "secrets", request.match_info["ref"])
    users = users_of(store, "secrets", obj.id)
    if users:
        raise conflict(f"secret {obj.spec.name} is in use by service(s) {', '.join(users)}")
    await _commit(request, [store_ops.Delete("secrets", obj.id, expect_version=obj.meta.version)])
    return web.Response(status=204)
