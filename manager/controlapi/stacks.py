"""Control API: stacks (`orch stack ...`).

A deploy is one store transaction: the planner (`manager.stacks.plan`)
compares the request with the store and gives every write of the deploy —
networks, secret and config versions, services, deletions, the Stack
object — and they are committed together or not at all. `plan` computes
the same and writes nothing. The Stack object is updated (or created) by
every deploy, expecting the version read, so a deploy that raced another
one is planned again from the new state, and `check_version` is decided
against what the transaction commits over.

Images are resolved to digests before planning (the registry is the only
I/O), as `resolve_image` asks; an image that cannot be resolved stays as
written, with a warning, as for `service create`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from api import codec
from api.errors import ValidationError
from api.objects import Network, Stack, TaskState
from api.stacks import PlanAction, StackRequest
from api.validation import Name
from manager import store as store_ops
from manager import tx
from manager.raft.driver import RaftError
from manager.stacks.plan import (
    Plan,
    SecretKey,
    StackError,
    images_to_resolve,
    owned,
    plan_deploy,
    plan_remove,
)
from manager.store import AlreadyExists, ClaimConflict, Conflict, MemoryStore, StoreError, TxResult
from pki.secretbox import seal

from .common import ManagerContext, Route, barrier, json_body
from .errors import HTTPError, http_error, json_response, not_found
from .networks import check_allocatable, check_subnet
from .services import service_json

DEPLOY_ATTEMPTS = 5
"""Plans a deploy may take when its transaction loses a race (another
writer changed an object it read: the orchestrator's allocator, another deploy)."""


def _request(body: dict[str, Any]) -> StackRequest:
    try:
        return codec.from_json(StackRequest, body, what="stack")
    except ValidationError as e:
        raise http_error(e) from None


_NAME = TypeAdapter(Name)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        _NAME.validate_python(name)
    except PydanticValidationError:
        raise HTTPError(400, "invalid_argument", f"{name!r} is not a valid stack name: letters, digits, '_', '.', "
                        "'-', starting with a letter or digit, at most 64 characters", field="name") from None
    return name


async def _resolve_images(m: ManagerContext, req: StackRequest, stack: str) -> tuple[dict[str, str], list[str]]:
    wanted = sorted(images_to_resolve(req, stack, m.store.view()))
    if m.resolve_image is None or not wanted:
        return {}, []
    resolver = m.resolve_image
    results = await asyncio.gather(*(resolver(i) for i in wanted), return_exceptions=True)
    images: dict[str, str] = {}
    warnings = []
    for image, got in zip(wanted, results):
        if isinstance(got, BaseException):
            warnings.append(f"image {image} could not be resolved to a digest ({got}); nodes pull the tag as it is "
                            "then")
        else:
            images[image] = got
    return images, warnings


def _secret_key(m: ManagerContext) -> SecretKey | None:
    key = m.secrets_key()
    return SecretKey(key, seal) if key is not None else None


def _check_networks(store: MemoryStore, req: StackRequest, plan: Plan) -> None:
    """The networks the deploy makes can be made: their subnets clear of the
    hosts' routes and nodes, a VNI and a subnet free (as `network create`)."""
    made = {e.name for e in plan.entries if e.kind == "network" and e.action != PlanAction.UNCHANGED}
    for n in req.networks:
        if n.spec is None or n.name not in made:
            continue
        where = f"networks.{n.key}"
        try:
            check_subnet(store, n.spec)
            for op in plan.ops:
                if isinstance(op, store_ops.Create) and isinstance(op.obj, Network) and op.obj.spec.name == n.name:
                    check_allocatable(store, op.obj)
        except HTTPError as e:
            raise HTTPError(e.status, e.code, f"{where}: {e.message}", field=where) from None


async def _plan(request: web.Request, req: StackRequest, stack: str) -> tuple[ManagerContext, Plan]:
    m = await barrier(request)
    images, warnings = await _resolve_images(m, req, stack)
    try:
        plan = plan_deploy(req, stack, m.store.view(), now=time.time(), images=images, secret_key=_secret_key(m))
    except StackError as e:
        raise http_error(e) from None
    _check_networks(m.store, req, plan)
    plan.warnings.extend(warnings)
    return m, plan


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {**plan.public().model_dump(mode="json"), "changed": plan.changed}


async def plan_stack(request: web.Request) -> web.Response:
    stack = _name(request)
    req = _request(await json_body(request))
    _, plan = await _plan(request, req, stack)
    return json_response(_plan_json(plan))


async def deploy_stack(request: web.Request) -> web.Response:
    stack = _name(request)
    req = _request(await json_body(request))
    attempt = 0
    while True:
        attempt += 1
        m, plan = await _plan(request, req, stack)
        result = await _commit(m, plan.ops, last=attempt == DEPLOY_ATTEMPTS)
        if result is None:
            continue
        st = next(ev.obj for ev in reversed(result.events) if ev.table == "stacks")
        return json_response({"plan": _plan_json(plan), "stack": _stack_json(m.store, st),
                              "services": plan.services})


async def _commit(m: ManagerContext, ops: list[store_ops.Op], *, last: bool) -> TxResult | None:
    """Commit a planned transaction; None when it lost a race and should be
    planned again: a version conflict, or a name taken meanwhile (another
    deploy of the same stack), means something the plan read has changed
    (a port taken is not one: planning again cannot free it)."""
    try:
        result: TxResult = await tx.commit(m.raft, m.store, ops)
        return result
    except tx.TxFailed as e:
        raced = isinstance(e.cause, (Conflict, AlreadyExists)) and not isinstance(e.cause, ClaimConflict)
        if raced and not last:
            return None
        raise http_error(e) from None
    except (RaftError, StoreError, ValidationError) as e:
        raise http_error(e) from None


def _stack_json(store: MemoryStore, st: Stack) -> dict[str, Any]:
    out = codec.to_json(st)
    view = store.view()
    running = desired = 0
    services = [r for r in st.resources if r.kind == "service"]
    for r in services:
        for t in view.find("tasks", "service_id", r.id):
            if t.desired_state <= TaskState.RUNNING:
                desired += 1
                running += t.status.state == TaskState.RUNNING
    out["summary"] = {"services": len(services), "tasks_running": running, "tasks_desired": desired}
    return out


def _stack(store: MemoryStore, name: str) -> Stack:
    st = store.view().get_by_name("stacks", name)
    if st is None:
        raise not_found(f"no stack named {name}")
    return st  # type: ignore[no-any-return]


async def list_stacks(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    return json_response([_stack_json(store, s) for s in sorted(store.view().list("stacks"),
                                                                key=lambda s: s.spec.name)])


async def get_stack(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    name = _name(request)
    st = _stack(store, name)
    services = [service_json(store, s) for s in owned(store.view(), "services", name)]
    return json_response({**_stack_json(store, st), "services": services})


async def stack_tasks(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    name = _name(request)
    view = store.view()
    services = owned(view, "services", name)
    if not services and view.get_by_name("stacks", name) is None:
        raise not_found(f"no stack named {name}")
    tasks = [codec.to_json(t) for s in services for t in view.find("tasks", "service_id", s.id)]
    return json_response(tasks)


async def remove_stack(request: web.Request) -> web.Response:
    name = _name(request)
    m = await barrier(request)
    store = m.store
    for attempt in range(1, DEPLOY_ATTEMPTS + 1):
        try:
            plan = plan_remove(name, store.view())
        except StackError as e:
            raise http_error(e) from None
        if await _commit(m, plan.ops, last=attempt == DEPLOY_ATTEMPTS) is not None:
            break
    pending = store.view().get_by_name("stacks", name)
    return json_response({"stack": name, "entries": [e.model_dump(mode="json") for e in plan.entries],
                          "services": plan.services, "removing": pending is not None})


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/stacks", list_stacks),
    Route("GET", "/v1/stacks/{name}", get_stack),
    Route("GET", "/v1/stacks/{name}/tasks", stack_tasks),
    Route("POST", "/v1/stacks/{name}/plan", plan_stack),
    Route("POST", "/v1/stacks/{name}/deploy", deploy_stack),
    Route("DELETE", "/v1/stacks/{name}", remove_stack),
)
