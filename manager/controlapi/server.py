"""Assembles the control API from its handler modules: which routes an
application serves, and the manager's own application.

Each handler module (cluster, nodes, services, networks, secrets, configs,
stacks, join, openapi) owns its handlers and exports a `ROUTES` table; the
shared plumbing is in `common` and the error table in `errors`. No handler
module imports this one. Handlers reach the manager through the `ManagerOf`
provider given here, so the same routes serve the manager's TCP port (always its manager)
and the node daemon's local socket (whichever manager the node runs now).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from . import cluster, configs, events, join, networks, nodes, openapi, secrets, services, stacks
from .common import MANAGER_OF, MAX_BODY, ManagerOf, Route
from .errors import error_middleware

CONTROL_ROUTES: tuple[Route, ...] = (
    cluster.ROUTES + nodes.ROUTES + services.ROUTES + networks.ROUTES + secrets.ROUTES + configs.ROUTES
    + stacks.ROUTES + events.ROUTES
    + join.ROUTES + openapi.ROUTES
)
"""What the CLI calls, on the TCP port (managers only) and the local socket."""

PUBLIC_ROUTES: tuple[Route, ...] = join.PUBLIC_ROUTES
"""What a node may call before it has a certificate: TCP port only."""


def _add(app: web.Application, manager_of: ManagerOf, routes: Iterable[Route]) -> None:
    app[MANAGER_OF] = manager_of
    for r in routes:
        if r.method == "GET":
            app.router.add_get(r.path, r.handler)  # and HEAD, as aiohttp does
        else:
            app.router.add_route(r.method, r.path, r.handler)


def add_routes(app: web.Application, manager_of: ManagerOf) -> None:
    """The control routes, served by the manager `manager_of()` returns per
    request (None answers 503 `not_manager`)."""
    _add(app, manager_of, CONTROL_ROUTES)


def add_public_routes(app: web.Application, manager_of: ManagerOf) -> None:
    """The join routes (CA certificate, join, certificate renewal)."""
    _add(app, manager_of, PUBLIC_ROUTES)


def build_app(manager_of: ManagerOf) -> web.Application:
    """A manager's TCP application: the control and the join routes behind
    the error middleware."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    add_routes(app, manager_of)
    add_public_routes(app, manager_of)
    return app
