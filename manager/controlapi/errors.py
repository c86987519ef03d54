"""How errors become HTTP answers: one JSON shape, a status that says whose
fault it was, and a message naming what and where."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def bad_request(message: str, field: str | None = None) -> HTTPError:
    return HTTPError(400, "invalid_argument", message, **({"field": field} if field else {}))


def not_found(message: str) -> HTTPError:
    return HTTPError(404, "not_found", message)


def conflict(message: str) -> HTTPError:
    return HTTPError(409, "conflict", message)


def unavailable(message: str) -> HTTPError:
    return HTTPError(503, "unavailable", message)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def error_body(e: HTTPError) -> dict[str, Any]:
    return {"error": {"code": e.code, "message": e.message, **e.extra}}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as e:
        return json_response(error_body(e), e.status)
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type == "application/json" and e.text:
            return web.Response(text=e.text, status=e.status, content_type="application/json")
        if e.status >= 400:
            return json_response(
                {"error": {"code": "http", "message": f"{request.method} {request.path}: {e.reason}"}},
                e.status,
            )
        raise
    except Exception as e:  # never let a request take the daemon down
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": {"code": "internal", "message": f"internal error: {e}"}}, 500)
