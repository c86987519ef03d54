"""The control API's one error table: every lower-layer error gets its
status and code, subclasses are never shadowed by their bases, and the
middleware answers with the same table for errors no handler converted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError as PydanticValidationError

from api.errors import ValidationError
from api.objects import ConfigSpec
from pki import CAError, CertError, PeerRejected, TokenError
from manager.controlapi.errors import ERROR_TABLE, error_middleware, http_error
from manager.stacks.plan import InvalidStack, MissingObject, StackConflict
from manager.raft.driver import NoLeader, NotLeader, RaftError, Stopped, Timeout
from manager.store import AlreadyExists, Conflict, InvalidTx, NotFound, TxTooLarge
from manager.tx import TxFailed
from scheduler.constraints import ConstraintError


def _pydantic_error() -> PydanticValidationError:
    try:
        ConfigSpec(name="not a valid name!", data=b"")
    except PydanticValidationError as e:
        return e
    raise AssertionError("ConfigSpec accepted an invalid name")


CASES: list[tuple[Exception, int, str]] = [
    (NotLeader(3, "membership changes must be made on the leader"), 503, "unavailable"),
    (NoLeader("no leader elected yet; retry shortly"), 503, "unavailable"),
    (Stopped("raft node is stopped"), 503, "unavailable"),
    (Timeout("read index not confirmed by a quorum in time"), 504, "timeout"),
    (RaftError("something else"), 503, "unavailable"),
    (NotFound("update nodes/x: no such object"), 404, "not_found"),
    (AlreadyExists("create configs/x: an object with this id already exists"), 409, "conflict"),
    (Conflict("update nodes/x: version mismatch"), 409, "conflict"),
    (TxTooLarge(5 << 20, 1 << 20), 413, "too_large"),
    (InvalidTx("malformed transaction"), 400, "invalid_argument"),
    (TxFailed(NotFound("delete secrets/x: no such object")), 404, "not_found"),
    (TxFailed(Conflict("update clusters/x: version mismatch")), 409, "conflict"),
    (ValidationError([("spec.name", "is required")]), 400, "invalid_argument"),
    (_pydantic_error(), 400, "invalid_argument"),
    (ConstraintError("task.placement.constraints[0]: no operator"), 400, "invalid_argument"),
    (PeerRejected("node x was removed from the cluster"), 403, "permission_denied"),
    (TokenError("not an orch join token"), 400, "invalid_argument"),
    (CertError("not a PEM certificate request"), 400, "invalid_argument"),
    (CAError("refused"), 400, "invalid_argument"),
    (MissingObject("networks.x: external network x does not exist"), 404, "not_found"),
    (StackConflict("stack s is at version 3, not 2"), 409, "conflict"),
    (InvalidStack("services.web: name must be s_web"), 400, "invalid_argument"),
    (RuntimeError("a bug"), 500, "internal"),
    (TxFailed(RuntimeError("too many concurrent updates")), 500, "internal"),
]


@pytest.mark.parametrize(("err", "status", "code"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_lower_layer_error_has_its_status_and_code(err: Exception, status: int, code: str) -> None:
    e = http_error(err)
    assert (e.status, e.code) == (status, code)
    assert e.message


def test_no_rule_is_shadowed_by_an_earlier_base_class() -> None:
    for i, later in enumerate(ERROR_TABLE):
        for earlier in ERROR_TABLE[:i]:
            assert not issubclass(later.error, earlier.error), (
                f"{later.error.__name__} is never reached: {earlier.error.__name__} comes first")


def test_not_leader_names_the_leader() -> None:
    assert "(leader: 3)" in http_error(NotLeader(3, "only the leader can do that")).message
    assert "(leader: unknown)" in http_error(NotLeader(0, "only the leader can do that")).message


def test_validation_errors_carry_their_field_path() -> None:
    e = http_error(ValidationError([("task.container.image", "is required")], what="service"))
    assert e.extra == {"field": "task.container.image"}
    assert "task.container.image: is required" in e.message
    p = http_error(_pydantic_error(), field="spec")
    assert p.extra == {"field": "spec.name"} and p.message.startswith("spec.name: ")


def test_field_names_where_other_errors_came_from() -> None:
    e = http_error(TokenError("bad digest"), field="token")
    assert (e.status, e.message, e.extra) == (400, "token: bad digest", {"field": "token"})


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async def timeout(request: web.Request) -> web.Response:
        raise Timeout("index 7 not applied in time")

    async def failed_tx(request: web.Request) -> web.Response:
        raise TxFailed(NotFound("update nodes/abc: no such object"))

    async def bug(request: web.Request) -> web.Response:
        raise KeyError("oops")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/timeout", timeout)
    app.router.add_get("/failed", failed_tx)
    app.router.add_get("/bug", bug)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_middleware_answers_unconverted_errors_from_the_table(client: TestClient) -> None:
    r = await client.get("/timeout")
    assert r.status == 504
    assert (await r.json())["error"] == {"code": "timeout", "message": "index 7 not applied in time"}
    r = await client.get("/failed")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await client.get("/bug")
    assert r.status == 500 and (await r.json())["error"]["code"] == "internal"
