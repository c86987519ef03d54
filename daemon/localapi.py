"""The daemon's root-only unix socket: what it serves besides the engine.

The engine's routes (images, containers, volumes) come from
`agent.localapi`. This module adds the cluster membership routes
(init/join/leave, info), the error handling of the whole socket, and the
mount point of the manager's control API: those routes exist only while
this node runs a manager, and are built the first time it does, so a node
that stays a worker never loads the manager's code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from agent.localapi import _err, _json
from api import codec
from api.errors import ValidationError
from api.objects import AddressPoolSpec

from .membership import ClusterError, Membership

log = logging.getLogger(__name__)

NOT_MANAGER = "this node is not a manager: run the command on a manager, or `orch init` here"


@web.middleware
async def local_error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors of the socket's own routes in the API's one JSON shape. The
    manager's routes have the manager's error middleware inside this one;
    the answers are the same as those of that middleware."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type == "application/json" and e.text:
            return web.Response(text=e.text, status=e.status, content_type="application/json")
        if e.status >= 400:
            return _err(e.status, "http", f"{request.method} {request.path}: {e.reason}")
        raise
    except Exception as e:  # never let a request take the daemon down
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _err(500, "internal", f"internal error: {e}")


class ManagerRoutes(web.AbstractResource):
    """The routes of the manager's control API on the local socket.

    `current()` gives the application holding them, or None while this node
    has never run a manager; requests go there the way aiohttp hands them to
    a sub-application. It is registered last and indexed at "/", so the
    socket's own routes always win. Without a manager every other path
    answers 503 (a wrong method on one of the socket's own paths stays 405).
    """

    def __init__(self, current: Callable[[], web.Application | None]) -> None:
        super().__init__()
        self._current = current
        self._router: web.UrlDispatcher | None = None
        self._not_manager: web.Application | None = None

    def bind(self, app: web.Application) -> None:
        self._router = app.router
        app.router.register_resource(self)

    @property
    def canonical(self) -> str:
        return "/{manager_path:.*}"

    def url_for(self, **kwargs: str) -> URL:
        raise RuntimeError(".url_for() is not supported by the manager's routes")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the manager's routes cannot be mounted under a prefix")

    def get_info(self) -> dict[str, Any]:
        return {"app": self._current()}

    def raw_match(self, path: str) -> bool:
        return False

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo | None, set[str]]:
        app = self._current()
        if app is None:
            if await self._own_methods(request):
                return None, set()  # the dispatcher answers 405 with the socket's own methods
            app = self._not_manager_app()
        match_info = await app.router.resolve(request)
        exc = match_info.http_exception
        if exc is not None:
            return None, set(exc.allowed_methods) if isinstance(exc, web.HTTPMethodNotAllowed) else set()
        match_info.add_app(app)
        return match_info, set()

    async def _own_methods(self, request: web.Request) -> set[str]:
        allowed: set[str] = set()
        for resource in self._router.resources() if self._router is not None else ():
            if resource is not self:
                _, methods = await resource.resolve(request)
                allowed |= methods
        return allowed

    def _not_manager_app(self) -> web.Application:
        if self._not_manager is None:
            async def not_manager(request: web.Request) -> web.Response:
                return _err(503, "not_manager", NOT_MANAGER)

            app = web.Application()
            app.router.add_route("*", "/{path:.*}", not_manager)
            app.freeze()
            self._not_manager = app
        return self._not_manager

    def __len__(self) -> int:
        app = self._current()
        return len(app.router.routes()) if app is not None else 0

    def __iter__(self) -> Any:
        app = self._current()
        return iter(app.router.routes() if app is not None else ())

    def __repr__(self) -> str:
        return "<ManagerRoutes>"


def add_manager_routes(app: web.Application, current: Callable[[], web.Application | None]) -> None:
    """Mount the manager's control API (see ManagerRoutes); call after every
    other route of `app` is added."""
    ManagerRoutes(current).bind(app)


# -- cluster membership (init/join/leave) ------------------------------------

MEMBERSHIP_KEY = web.AppKey("membership", Membership)


def add_cluster_routes(app: web.Application, membership: Membership) -> None:
    app[MEMBERSHIP_KEY] = membership
    app.router.add_post("/v1/swarm/init", swarm_init)
    app.router.add_post("/v1/swarm/join", swarm_join)
    app.router.add_post("/v1/swarm/leave", swarm_leave)
    app.router.add_get("/v1/info", info)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": {"code": "invalid_argument",
                                                            "message": "request body is not valid JSON"}}),
                                 content_type="application/json") from None
    return body if isinstance(body, dict) else {}


async def _membership_call(coro: Any) -> web.Response:
    try:
        return _json(await coro)
    except ClusterError as e:
        return _err(e.status, "cluster", str(e))


async def swarm_init(request: web.Request) -> web.Response:
    b = await _body(request)
    m = request.app[MEMBERSHIP_KEY]
    if b.get("force_new_cluster"):
        return await _membership_call(m.force_new_cluster())
    pool = None
    if b.get("default_addr_pool") is not None:
        try:
            pool = codec.from_json(AddressPoolSpec, b["default_addr_pool"], what="default_addr_pool")
        except ValidationError as e:
            return _err(400, "invalid_argument", str(e))
    return await _membership_call(m.init(str(b.get("listen_addr") or "0.0.0.0:4242"), b.get("advertise_addr"),
                                         addr_pool=pool))


async def swarm_join(request: web.Request) -> web.Response:
    b = await _body(request)
    if not isinstance(b.get("token"), str) or not isinstance(b.get("remote"), str):
        return _err(400, "invalid_argument", "token and remote (HOST:PORT of a manager) are required")
    m = request.app[MEMBERSHIP_KEY]
    return await _membership_call(m.join(b["token"], b["remote"], str(b.get("listen_addr") or "0.0.0.0:4242"),
                                         b.get("advertise_addr")))


async def swarm_leave(request: web.Request) -> web.Response:
    b = await _body(request)
    return await _membership_call(request.app[MEMBERSHIP_KEY].leave(bool(b.get("force"))))


async def info(request: web.Request) -> web.Response:
    return _json(request.app[MEMBERSHIP_KEY].info())
