"""Request plumbing shared by the control API's handler modules: which manager
a request is served by, JSON request bodies, linearizable reads, commits,
finding an object by id or name, and the shape of a route table.

Reads are linearizable: each waits for a ReadIndex barrier, so a follower
never answers with state older than a write already acknowledged anywhere.
Writes become one store transaction = one Raft entry; a follower's proposal
is forwarded to the leader by Raft itself, and the caller is answered when
the entry has been applied on the node it asked. Every failure leaves here
as an `HTTPError` made by the one error table (errors.py).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError as PydanticValidationError

from api.errors import ValidationError
from api.objects import Cluster
from manager import tx
from manager.clusterinfo import cluster_of
from manager.raft.driver import RaftError, RaftNode
from manager.store import MemoryStore, Op, StoreError, TxResult

from .errors import HTTPError, bad_request, http_error, not_found

MAX_BODY = 2 << 20

ImageResolver = Callable[[str], Awaitable[str]]
"""`ref` -> `ref@digest` as the registry serves it now."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NOT_MANAGER = "this node is not a manager: run the command on a manager, or `orch init` here"


def _no_secrets_key() -> bytes | None:
    return None


@dataclass(frozen=True)
class ManagerContext:
    """What the control API handlers use of a running manager."""

    raft: RaftNode
    store: MemoryStore
    # The cluster's key for secrets at rest, read per request: a manager may
    # get it after it started (None: secrets cannot be created here).
    secrets_key: Callable[[], bytes | None] = _no_secrets_key
    # Pins service images to digests; None leaves references as given.
    resolve_image: ImageResolver | None = None
    # The cluster event log (manager.events.EventLog); None: no events here.
    events: Any = None


ManagerOf = Callable[[], ManagerContext | None]
"""The manager serving requests now; None when this node runs none (the
node daemon's local socket then answers 503 `not_manager`)."""

MANAGER_OF: web.AppKey[ManagerOf] = web.AppKey("manager_of")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler


def manager(request: web.Request) -> ManagerContext:
    m = request.app[MANAGER_OF]()
    if m is None:
        raise HTTPError(503, "not_manager", NOT_MANAGER)
    return m


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object within the app's size limit."""
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge as e:
        raise HTTPError(413, "too_large", f"request body too large: {e.text}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


async def barrier(request: web.Request) -> ManagerContext:
    """Wait until the request's manager has applied everything committed
    before now; its store may then be read. Returns that manager."""
    m = manager(request)
    try:
        await m.raft.read_barrier()
    except RaftError as e:
        raise http_error(e) from None
    return m


async def commit(request: web.Request, ops: list[Op]) -> TxResult:
    """Replicate `ops` as one transaction and wait until it is applied here."""
    m = manager(request)
    try:
        return await tx.commit(m.raft, m.store, ops)
    except (tx.TxFailed, RaftError, StoreError, ValidationError) as e:  # encoding validates the objects
        raise http_error(e) from None


def resolve(store: MemoryStore, table: str, ref: str) -> Any:
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


def named_blob(body: dict[str, Any], spec_type: Any, *, required: bool) -> tuple[Any, bytes]:
    """A config's or secret's create body ({name, labels, data: base64}) as
    its validated spec and the decoded data; errors name the field."""
    unknown = set(body) - {"name", "labels", "data"}
    if unknown:
        raise bad_request(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    data = body.get("data") if required else body.get("data", "")
    if not isinstance(data, str):
        raise bad_request("data: required, a base64 string" if required else "data: must be a base64 string",
                          field="data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("data: not valid base64", field="data") from None
    try:
        spec = spec_type(name=body.get("name"), labels=body.get("labels") or {}, data=raw)
    except PydanticValidationError as e:
        raise http_error(e) from None
    return spec, raw


def cluster_state(store: MemoryStore) -> Cluster:
    """The cluster object (CA, join secrets, removed nodes); 503 before init wrote it."""
    c = cluster_of(store)
    if c is None:
        raise HTTPError(503, "unavailable", "this manager has no cluster state yet")
    return c


def users_of(store: MemoryStore, table: str, obj_id: str) -> list[str]:
    """Names of the services that reference a secret or config."""
    out = []
    for s in store.view().list("services"):
        c = s.spec.task.container
        refs = c.secrets if table == "secrets" else c.configs
        if any((r.secret_id if table == "secrets" else r.config_id) == obj_id for r in refs):
            out.append(s.spec.name)
    return sorted(out)
