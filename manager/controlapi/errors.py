"""How errors become HTTP answers: one JSON shape, a status that says whose
fault it was, and a message naming what and where.

`ERROR_TABLE` is the one place that decides how an error of a lower layer
(Raft, store, validation, CA) is answered; handlers raise those errors or pass
them to `http_error`, and `error_middleware` applies the same table to any
that escape a handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError as PydanticValidationError

from api.errors import ValidationError
from pki import CAError, PeerRejected, TokenError
from manager.raft.driver import NoLeader, NotLeader, RaftError, Stopped, Timeout
from manager.stacks.plan import InvalidStack, MissingObject, StackConflict, StackError
from manager.store import AlreadyExists, Conflict, NotFound, StoreError, TxTooLarge
from manager.tx import TxFailed
from scheduler.constraints import ConstraintError

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


# -- the error table -----------------------------------------------------------


@dataclass(frozen=True)
class ErrorRule:
    """How one type of lower-layer error is answered."""

    error: type[Exception]
    status: int
    code: str


# First match wins, so a subclass comes before its base (a test checks it).
ERROR_TABLE: tuple[ErrorRule, ...] = (
    # Raft gave no decision. A timeout is 504, not 503: the write may still
    # commit, so the caller must read before retrying rather than resend.
    ErrorRule(NotLeader, 503, "unavailable"),
    ErrorRule(NoLeader, 503, "unavailable"),
    ErrorRule(Stopped, 503, "unavailable"),
    ErrorRule(Timeout, 504, "timeout"),
    ErrorRule(RaftError, 503, "unavailable"),
    # The transaction was decided and refused (the same on every replica).
    ErrorRule(NotFound, 404, "not_found"),
    ErrorRule(AlreadyExists, 409, "conflict"),
    ErrorRule(Conflict, 409, "conflict"),
    ErrorRule(TxTooLarge, 413, "too_large"),
    ErrorRule(StoreError, 400, "invalid_argument"),
    # What the caller sent is invalid.
    ErrorRule(ValidationError, 400, "invalid_argument"),
    ErrorRule(PydanticValidationError, 400, "invalid_argument"),
    ErrorRule(ConstraintError, 400, "invalid_argument"),
    # A stack deploy or removal refused by the planner, with the reason.
    ErrorRule(MissingObject, 404, "not_found"),
    ErrorRule(StackConflict, 409, "conflict"),
    ErrorRule(InvalidStack, 400, "invalid_argument"),
    ErrorRule(StackError, 400, "invalid_argument"),
    # The CA refused: a rejected peer is an authorization failure, anything
    # else (token, CSR, certificate) is bad input.
    ErrorRule(PeerRejected, 403, "permission_denied"),
    ErrorRule(TokenError, 400, "invalid_argument"),
    ErrorRule(CAError, 400, "invalid_argument"),
)


def rule_for(e: BaseException) -> ErrorRule | None:
    """The table's rule for `e` (a failed transaction by its cause)."""
    if isinstance(e, TxFailed):
        e = e.cause
    return next((r for r in ERROR_TABLE if isinstance(e, r.error)), None)


def http_error(e: Exception, field: str | None = None) -> HTTPError:
    """The answer for a lower-layer error. `field` says which part of the
    request it came from: it prefixes the field paths of validation errors,
    and names the field of any other error."""
    cause = e.cause if isinstance(e, TxFailed) else e
    rule = rule_for(cause)
    if rule is None:
        return HTTPError(500, "internal", f"internal error: {cause}")
    if isinstance(cause, PydanticValidationError):
        cause = ValidationError.from_pydantic(cause, prefix=field or "")
    elif isinstance(cause, ValidationError) and field:
        cause = ValidationError([(f"{field}.{p}" if p else field, m) for p, m in cause.errors], what=cause.what)
    if isinstance(cause, ValidationError):
        where = cause.errors[0][0] if cause.errors else None
        return HTTPError(rule.status, rule.code, str(cause), **({"field": where} if where else {}))
    message = str(cause)
    if isinstance(cause, StackError) and cause.field and not field:
        return HTTPError(rule.status, rule.code, message, field=cause.field)
    if isinstance(cause, NotLeader):
        message = f"{message} (leader: {cause.leader or 'unknown'})"
    if field:
        return HTTPError(rule.status, rule.code, f"{field}: {message}", field=field)
    return HTTPError(rule.status, rule.code, message)


# -- responses -------------------------------------------------------------------


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
        if rule_for(e) is not None:  # a lower-layer error no handler converted
            err = http_error(e)
            return json_response(error_body(err), err.status)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": {"code": "internal", "message": f"internal error: {e}"}}, 500)
