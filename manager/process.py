"""The manager: a Raft replica of the store behind the control API.

One aiohttp application serves, on the manager's one TCP port, the control
API, the Raft peer stream, the dispatcher's agent sessions and the join
endpoints. With the cluster CA in place the port speaks mutual TLS: every
request is identified by its peer certificate (CN = node id, OU = role) and
authorized by `auth_middleware`; only the CA certificate and the join call
are open to a peer without a certificate (it has none yet). The node daemon
adds the control routes to its root-only unix socket for the local CLI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from api.objects import TaskState
from api.probe import NULL_PROBE, Probe
from api.session import SESSION_PATH
from manager.raft.driver import RaftNode, RaftSettings
from manager.raft.transport import RAFT_PATH
from manager.store import MemoryStore
from pki.tls import NodeTLS, client_ssl, parse_addr, server_ssl

from .clusterinfo import cluster_of, manager_addrs
from .controlapi.common import ManagerContext
from .controlapi.errors import HTTPError
from .controlapi.server import build_app
from .dispatcher import Dispatcher, DispatcherSettings
from .events import EventLog
from .leadership import Supervisor
from .membership import RoleManager

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/v1/ca", "/v1/join"})
IDENTITY_KEY = "orch.identity"


@dataclass
class ManagerOptions:
    node_id: int
    data_dir: str
    listen_addr: str = "0.0.0.0:4242"
    advertise_addr: str | None = None
    initial_cluster: dict[int, str] = field(default_factory=dict)
    settings: RaftSettings = field(default_factory=RaftSettings)
    tls: NodeTLS | None = None
    dispatcher: DispatcherSettings = field(default_factory=DispatcherSettings)
    force_new_cluster: bool = False  # rewrite the Raft state as a single-member cluster first
    secrets_key: bytes | None = None  # the cluster's key for secrets at rest (see pki.secretbox)
    resolve_image: Any = None  # async (ref) -> ref@digest, from this node's image service
    probe: Probe = NULL_PROBE  # events the daemon's metrics count (api.probe)


class ManagerProcess:
    def __init__(self, opts: ManagerOptions) -> None:
        self.opts = opts
        self.store = MemoryStore()
        self.raft = RaftNode(
            opts.node_id,
            os.path.join(opts.data_dir, "raft"),
            self.store,
            settings=opts.settings,
            initial_members=opts.initial_cluster,
            advertise_addr=opts.advertise_addr or opts.listen_addr,
            ssl_context=client_ssl(opts.tls) if opts.tls else None,
            probe=opts.probe,
        )
        # The cluster's events (`orch events`), derived from the store's changes
        # and the Raft log's term starts, from the first entry applied here.
        self.events = EventLog(self.store)
        self.raft.add_term_listener(self.events.term_started)
        # What the control API handlers use of this manager (also on the node's local socket).
        self.control = ManagerContext(self.raft, self.store, lambda: self.opts.secrets_key, opts.resolve_image,
                                      events=self.events)
        self.app = build_app(lambda: self.control)
        if opts.tls is not None:
            self.app.middlewares.append(self._auth_middleware)  # inside error_middleware
        self.app.router.add_get(RAFT_PATH, self.raft.transport.handle)
        self.dispatcher = Dispatcher(self.raft, self.store, self._identify, opts.dispatcher,
                                     manager_addrs=lambda: manager_addrs(self.store),
                                     secrets_key=lambda: self.opts.secrets_key)
        self.dispatcher.attach(self.app)
        self.app.router.add_get("/v1/services/{ref}/logs", self.service_logs)
        from .execapi import EXEC_PATH, ExecAPI

        from .execapi import log_exec

        def record_exec(service: str, task: str, node: str, argv: Any, user: str) -> None:
            log_exec(service, task, node, argv, user)  # the daemon's log, and
            try:  # `orch events` on this manager; never a reason to refuse the exec
                self.events.record_exec(service, task, node, argv, user)
            except Exception:
                log.exception("recording exec of task %s as an event", task)

        self.execapi = ExecAPI(self.raft, self.store, self.dispatcher, caller=self._caller,
                               relay_ssl=lambda: client_ssl(opts.tls) if opts.tls else None,
                               record_exec=record_exec)
        self.app.router.add_get(EXEC_PATH, self.execapi.handle)
        self.roles = RoleManager(self.raft, self.store)
        from .orchestrator.loop import Orchestrator

        self.orchestrator = Orchestrator(self.raft, self.store, probe=opts.probe)
        from .stacks.reaper import StackReaper

        self.stack_reaper = StackReaper(self.raft, self.store)
        self._runner: web.AppRunner | None = None
        self.leadership: Supervisor | None = None  # made in start()

    # -- identity and authorization ------------------------------------------

    def _identify(self, request: web.Request) -> str | None:
        ident = request.get(IDENTITY_KEY)
        if ident is not None:
            return ident.node_id
        return None if self.opts.tls is not None else request.query.get("node")

    @staticmethod
    def _caller(request: web.Request) -> tuple[str, bool]:
        """Who calls (for records) and whether it may speak for another
        caller: a manager relaying a user's request."""
        ident = request.get(IDENTITY_KEY)
        if ident is not None:
            return f"node:{ident.node_id}", ident.role == "manager"
        return "local", False  # the node's root-only socket (or a test manager without TLS)

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        from pki import CAError, check_peer, peer_identity

        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if der is None:
            if request.path in PUBLIC_PATHS:
                return await handler(request)
            raise HTTPError(401, "unauthenticated", "a client certificate of this cluster is required")
        try:
            ident = peer_identity(der)
        except CAError as e:
            raise HTTPError(401, "unauthenticated", f"bad client certificate: {e}") from None
        cluster = cluster_of(self.store)
        if cluster is not None:
            try:
                check_peer(ident, cluster.removed_nodes, cluster.id)
            except CAError as e:
                raise HTTPError(403, "permission_denied", str(e)) from None
        request[IDENTITY_KEY] = ident
        if request.path in PUBLIC_PATHS or request.path in (SESSION_PATH, "/v1/certs/renew"):
            return await handler(request)
        if ident.role != "manager":
            raise HTTPError(403, "permission_denied", f"node {ident.node_id} is a {ident.role}: managers only")
        return await handler(request)

    # -- service logs ----------------------------------------------------------

    async def service_logs(self, request: web.Request) -> web.StreamResponse:
        """The merged logs of a service's tasks, fetched from their nodes
        through the dispatcher's sessions (on the leader; a follower relays)."""
        import json

        import aiohttp

        from api.session import LogLines

        from .controlapi.common import resolve

        if not self.raft.is_leader:
            leader = self.raft.members.get(self.raft.lead) if self.raft.lead else None
            if not leader or self.opts.tls is None:
                raise HTTPError(503, "unavailable", "no leader to fetch logs from; retry shortly")
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            url = f"https://{leader}{request.path_qs}"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl(self.opts.tls))) as s:
                async with s.get(url) as r:
                    if r.status >= 400:
                        raise HTTPError(r.status, "upstream", (await r.text())[:2000])
                    await resp.prepare(request)
                    async for chunk in r.content.iter_any():
                        await resp.write(chunk)
            await resp.write_eof()
            return resp
        await self.raft.read_barrier()
        svc = resolve(self.store, "services", request.match_info["ref"])
        follow = request.query.get("follow") in ("1", "true")
        tail_q = request.query.get("tail", "")
        tail = int(tail_q) if tail_q.isdigit() else None
        view = self.store.view()
        hosts = {n.id: n.description.hostname for n in view.list("nodes")}
        by_node: dict[str, list[str]] = {}
        names = {}
        for t in view.find("tasks", "service_id", svc.id):
            if not t.node_id or t.status.state < TaskState.STARTING:
                continue
            if not follow or t.desired_state <= TaskState.RUNNING:
                by_node.setdefault(t.node_id, []).append(t.id)
                names[t.id] = f"{svc.spec.name}.{t.slot or t.node_id[:12]}.{t.id[:12]}"
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        async for m in self.dispatcher.logs(by_node, follow=follow, tail=tail):
            tid = m.task
            node = next((n for n, ts in by_node.items() if tid in ts), "")
            base = {"task": tid, "name": names.get(tid, tid), "node": hosts.get(node, node)}
            if isinstance(m, LogLines):
                out = "".join(json.dumps({**base, "ts": ts, "stream": st, "line": line}) + "\n"
                              for ts, st, line in m.lines)
                await resp.write(out.encode())
            elif m.error:
                await resp.write((json.dumps({**base, "error": m.error}) + "\n").encode())
        await resp.write_eof()
        return resp

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.opts.data_dir, exist_ok=True)
        if self.opts.force_new_cluster:
            RaftNode(self.opts.node_id, os.path.join(self.opts.data_dir, "raft"), MemoryStore(),
                     settings=self.opts.settings,
                     advertise_addr=self.opts.advertise_addr or self.opts.listen_addr).rewrite_as_single_member()
        self.raft.open()
        self.events.start()
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        host, port = parse_addr(self.opts.listen_addr)
        ssl_ctx = server_ssl(self.opts.tls) if self.opts.tls else None
        await web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=ssl_ctx).start()
        # Leader-only work follows the driver's leader changes; listening
        # before the driver starts means no election goes unseen.
        self.leadership = Supervisor(self.raft.id, [
            ("dispatcher", self.dispatcher), ("roles", self.roles), ("orchestrator", self.orchestrator),
            ("stacks", self.stack_reaper)])
        self.raft.add_leader_listener(self.leadership.leader_changed)
        self.leadership.start()
        await self.raft.start()
        log.info("manager %d serving on %s%s", self.opts.node_id, self.opts.listen_addr,
                 " (mutual TLS)" if ssl_ctx else "")

    async def stop(self) -> None:
        leadership = self.leadership
        if leadership is not None:
            await leadership.stop()
            self.raft.remove_leader_listener(leadership.leader_changed)
        await self.dispatcher.stop()
        await self.raft.stop()
        await self.events.stop()
        if self._runner is not None:
            await self._runner.cleanup()
