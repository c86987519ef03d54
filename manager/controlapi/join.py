"""Control API: joining the cluster and its join tokens.

- `GET /v1/ca`: the cluster's CA certificate. Served without a client
  certificate: a joining node checks it against the digest in its token
  before trusting anything else from us.
- `POST /v1/join`: token + CSR -> a node certificate (CN = new node id,
  OU = role) and the node's place in the store. A manager's Raft member is
  added by the leader's role reconciler (learner first, voter once caught up).
- `POST /v1/certs/renew`: a node's new certificate for the role the cluster
  wants it to have.
- `GET /v1/join-tokens`, `POST /v1/join-tokens/rotate`: the tokens, for
  `orch join-token`.

The first three are `PUBLIC_ROUTES`, served on the manager's TCP port only
(a joining node has no other way in); the tokens are control routes.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError as PydanticValidationError

from api import codec
from api.objects import ManagerStatus, Meta, Node, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus, evolve
from manager import store as store_ops
from pki import CAError, RootCA, TokenError, parse_token
from manager.clusterinfo import cluster_of, join_tokens, manager_addrs, new_raft_id

from .common import Route, barrier, cluster_state, commit, json_body, manager
from .errors import HTTPError, bad_request, http_error, json_response

log = logging.getLogger(__name__)

# Where ManagerProcess's auth middleware puts the caller's NodeIdentity.
IDENTITY = "orch.identity"


def _manager_secrets(request: web.Request, role: NodeRole) -> dict[str, Any]:
    """What only managers get: the cluster's secrets key (over mutual TLS)."""
    if role != NodeRole.MANAGER:
        return {}
    key = manager(request).secrets_key()
    return {"secrets_key": base64.b64encode(key).decode()} if key else {}


async def get_ca(request: web.Request) -> web.Response:
    return json_response({"ca_cert": cluster_state(manager(request).store).root_ca.ca_cert})


async def join(request: web.Request) -> web.Response:
    body = await json_body(request)
    token, csr = body.get("token"), body.get("csr")
    if not isinstance(token, str) or not isinstance(csr, str):
        raise bad_request("token and csr (PEM) are required")
    store = manager(request).store
    cluster = cluster_state(store)
    try:
        tok = parse_token(token)
    except TokenError as e:
        raise http_error(e, field="token") from None
    ca = cluster.root_ca
    if not tok.matches_ca(ca.ca_cert):
        raise HTTPError(403, "permission_denied", "the join token is for a different cluster (CA digest mismatch)")
    if hmac.compare_digest(tok.secret.encode(), ca.manager_secret.encode()):
        role = NodeRole.MANAGER
    elif hmac.compare_digest(tok.secret.encode(), ca.worker_secret.encode()):
        role = NodeRole.WORKER
    else:
        raise HTTPError(403, "permission_denied", "invalid join token: it was rotated or never valid")
    addr = body.get("advertise_addr") or ""
    if role == NodeRole.MANAGER and (not isinstance(addr, str) or ":" not in addr):
        raise bad_request("advertise_addr: a joining manager needs HOST:PORT", field="advertise_addr")
    try:
        desc = NodeDescription.model_validate(body.get("description") or {})
    except PydanticValidationError as e:
        raise http_error(e, field="description") from None
    node_id = codec.new_id()
    try:
        root = RootCA.from_pem(ca.ca_cert, ca.ca_key)
        cert = root.issue(csr, node_id, role.value)
    except CAError as e:
        raise http_error(e, field="csr") from None
    now = time.time()
    node = Node(
        id=node_id, meta=Meta(created_at=now, updated_at=now),
        spec=NodeSpec(role=role), role=role, description=desc,
        status=NodeStatus(state=NodeState.UNKNOWN, addr=addr.rpartition(":")[0] if addr else ""),
        manager_status=ManagerStatus(raft_id=new_raft_id(), addr=addr) if role == NodeRole.MANAGER else None,
    )
    await commit(request, [store_ops.Create("nodes", node)])
    log.info("node %s joined as %s", node_id, role.value)
    return json_response({
        "node_id": node_id, "role": role.value, "cert": cert, "ca_cert": ca.ca_cert,
        "cluster_id": cluster.id, "raft_id": node.manager_status.raft_id if node.manager_status else 0,
        "managers": manager_addrs(store), **_manager_secrets(request, role),
    }, 201)


async def renew(request: web.Request) -> web.Response:
    """A node's new certificate, for the role the cluster wants it to have.
    A node promoted to manager gets its Raft id and address recorded here
    (the leader's role reconciler then adds it to Raft)."""
    ident = request.get(IDENTITY)
    if ident is None:
        raise HTTPError(401, "unauthenticated", "renewal needs the node's current certificate")
    body = await json_body(request)
    csr = body.get("csr")
    if not isinstance(csr, str):
        raise bad_request("csr (PEM) is required", field="csr")
    store = (await barrier(request)).store
    node = store.view().get("nodes", ident.node_id)
    if node is None:
        raise HTTPError(403, "permission_denied", f"node {ident.node_id} is not part of this cluster")
    role = node.spec.role
    if role == NodeRole.MANAGER and node.manager_status is None:
        addr = body.get("advertise_addr")
        if not isinstance(addr, str) or ":" not in addr:
            raise bad_request("advertise_addr: a node becoming a manager needs HOST:PORT", field="advertise_addr")
        node = evolve(node, manager_status=ManagerStatus(raft_id=new_raft_id(), addr=addr))
        await commit(request, [store_ops.Update("nodes", node)])
    cluster = cluster_state(store)
    try:
        cert = RootCA.from_pem(cluster.root_ca.ca_cert, cluster.root_ca.ca_key).issue(csr, node.id, role.value)
    except CAError as e:
        raise http_error(e, field="csr") from None
    return json_response({"cert": cert, "role": role.value, "ca_cert": cluster.root_ca.ca_cert,
                          "raft_id": node.manager_status.raft_id if node.manager_status else 0,
                          "managers": manager_addrs(store), **_manager_secrets(request, role)})


async def get_tokens(request: web.Request) -> web.Response:
    m = await barrier(request)
    return json_response(join_tokens(cluster_state(m.store)))


async def rotate_token(request: web.Request) -> web.Response:
    role = request.query.get("role", "")
    if role not in ("worker", "manager"):
        raise bad_request("role: worker or manager", field="role")
    m = await barrier(request)
    c = cluster_state(m.store)
    field = f"root_ca__{role}_secret"
    new = evolve(c, **{field: secrets.token_hex(16)})
    await commit(request, [store_ops.Update("clusters", new)])
    return json_response(join_tokens(cluster_of(m.store) or new))


PUBLIC_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/ca", get_ca),
    Route("POST", "/v1/join", join),
    Route("POST", "/v1/certs/renew", renew),
)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/join-tokens", get_tokens),
    Route("POST", "/v1/join-tokens/rotate", rotate_token),
)
