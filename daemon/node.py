"""The node daemon, the one composition root (as SwarmKit's node/node.go):
this host's engine and agent, its local API, and the manager while the node
is one.

The engine (images, containers, volumes), the worker and the agent session
always run; the manager runs while the node is a manager (a static one from
the flags, or one made by init/join/promotion, see daemon.membership). The
local unix socket serves the engine and membership routes and, once there is
a manager, the control API. The manager is imported only then: a node that
stays a worker never loads it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.engine import Engine
from agent.images import ImageService, RegistryConfig
from agent.localapi import WORKER_KEY, add_container_routes, add_image_routes
from agent.runtime.runtime import ContainerManager
from agent.networking import TaskNetworks
from agent.runtime.volumes import VolumeStore
from agent.worker import Worker
from api.probe import NULL_PROBE, Probe

from .localapi import add_cluster_routes, add_manager_routes, local_error_middleware
from .membership import Membership
from .settings import ManagerSettings, check_node_options

log = logging.getLogger(__name__)


@dataclass
class NodeOptions:
    """What the node daemon runs with; `orch daemon` makes it from its flags
    (daemon.options). Every field is checked when the options are made
    (settings.check_node_options): a bad value raises SettingsError naming
    the field."""

    # Directory of all this node's state: images/, engine/ (containers,
    # volumes), cluster/ (membership, certificates), manager/ (Raft log and
    # snapshots). Created if missing. Required.
    data_dir: str
    # Path of the root-only unix socket for the local CLI (mode 0600, replaced
    # if a stale socket is there); None serves no local socket. At most 107
    # bytes (the kernel's limit for socket paths).
    socket_path: str | None = "/run/orch/orch.sock"
    # Registries spoken to over plain http: "host:port", "host" (any port) or
    # a CIDR of registry addresses. Default: none.
    insecure_registries: tuple[str, ...] = ()
    # docker-style config.json whose "auths" hold registry credentials; None:
    # anonymous pulls only.
    registry_auth_file: str | None = None
    # manager.process.ManagerOptions of a static manager this daemon runs from
    # the start (`orch daemon --manager` or `--initial-cluster`); None for a
    # node that is a worker or gets its manager from init/join/promotion.
    # Checked by ManagerOptions itself.
    manager: Any = None
    # The OCI runtime binary, a name looked up on PATH or a path (runc, crun, youki).
    runtime: str = "runc"
    # cgroup (relative to the cgroup root) under which each container gets its own.
    cgroup_parent: str = "orch"
    # The name this node reports to the managers; None: the host's name.
    hostname: str | None = None
    # Starts the names of everything overlay networking makes in machine-wide
    # places (network namespaces of sandboxes and tasks, the nftables table):
    # distinct per daemon when several share one machine (the test fleet).
    network_prefix: str = "orch-"
    # "HOST:PORT" to serve Prometheus metrics on (GET /metrics, plain HTTP:
    # bind it to loopback or a management network); None serves none.
    metrics_addr: str | None = None
    # How a manager made by init, join or promotion runs (Raft timing,
    # snapshots, heartbeat period); None: the manager's defaults.
    manager_settings: ManagerSettings | None = None
    # Free-form values for code that embeds the daemon; the daemon reads none of them.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_node_options(self)


class NodeDaemon:
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.images: ImageService | None = None
        self.containers: Any = None
        self.volumes: Any = None
        self.manager: Any = None
        self.membership: Any = None
        self.worker: Any = None
        self.networks: TaskNetworks | None = None
        self._local: web.AppRunner | None = None
        self._control: web.Application | None = None
        # daemon.metrics.Metrics when --metrics-addr is given: it is also the
        # probe every part reports its events to; otherwise they report to
        # the no-op probe and prometheus_client is never loaded.
        self.metrics: Any = None
        self.probe: Probe = NULL_PROBE

    async def start(self) -> None:
        os.makedirs(self.opts.data_dir, exist_ok=True)
        if self.opts.metrics_addr is not None:
            from .metrics import Metrics

            self.metrics = Metrics(self)
            self.probe = self.metrics
            # First, so that an address in use stops the daemon before it
            # has started anything; parts not made yet are left out of scrapes.
            await self.metrics.serve(self.opts.metrics_addr)
        self.images = ImageService(
            os.path.join(self.opts.data_dir, "images"),
            RegistryConfig(
                insecure_registries=tuple(self.opts.insecure_registries),
                auth_file=Path(self.opts.registry_auth_file) if self.opts.registry_auth_file else None,
            ),
        )
        self.containers = ContainerManager(
            os.path.join(self.opts.data_dir, "engine"),
            runtime=self.opts.runtime,
            cgroup_parent=self.opts.cgroup_parent,
        )
        self.images.probe = self.containers.probe = self.probe
        # Containers outlive the daemon: adopt the running ones, collect the
        # exit codes of those that ended while it was down.
        await self.containers.recover()
        self.containers.start_supervisor()
        self.volumes = VolumeStore(os.path.join(self.opts.data_dir, "engine"))
        local = web.Application(middlewares=[local_error_middleware], client_max_size=4 << 20)
        add_image_routes(local, self.images)
        add_container_routes(local, self.images, self.containers, self.volumes)
        self.membership = Membership(self.opts.data_dir, hostname=self.opts.hostname,
                                     settings=self.opts.manager_settings)
        self.membership.resolve_image = self.images.resolve
        self.membership.probe = self.probe
        add_cluster_routes(local, self.membership)
        add_manager_routes(local, self._control_routes)
        self.networks = TaskNetworks(self.opts.network_prefix, self._underlay_addr)
        self.networks.probe = self.probe
        self.worker = Worker(Engine(self.images, self.containers, self.volumes), self.membership.send,
                             networks=self.networks)
        self.membership.worker = self.worker
        local[WORKER_KEY] = self.worker
        self.worker.start()
        if self.opts.manager is not None:
            from manager.process import ManagerProcess  # a static manager (see _control_routes)

            self.manager = ManagerProcess(replace(self.opts.manager, probe=self.probe))
            await self.manager.start()
        else:
            await self.membership.resume()
        if self.opts.socket_path:
            path = self.opts.socket_path
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
            self._local = web.AppRunner(local, handle_signals=False, access_log=None)
            await self._local.setup()
            old = os.umask(0o177)  # root-only: the socket is full control of this node
            try:
                await web.UnixSite(self._local, path).start()
            finally:
                os.umask(old)
            os.chmod(path, 0o600)

    def _control_routes(self) -> web.Application | None:
        """The manager's routes on the local socket: built the first time this
        node runs a manager, None before. Until then the manager is never
        imported, which keeps a worker's daemon small."""
        if self._control is not None or self._current_manager() is None:
            return self._control
        from manager.controlapi.common import ManagerContext
        from manager.controlapi.errors import error_middleware
        from manager.controlapi.server import add_routes

        local = web.Application(middlewares=[error_middleware])

        def control() -> ManagerContext | None:
            # The control API on the local socket follows whichever manager this
            # node runs now (none, a static one, or one from init/join); images
            # are pinned with this node's image service.
            m = self._current_manager()
            return None if m is None else replace(m.control, resolve_image=self.images.resolve)

        add_routes(local, control)

        async def service_logs(request: web.Request) -> web.StreamResponse:
            m = self._current_manager()
            if m is None:
                from manager.controlapi.errors import HTTPError

                raise HTTPError(503, "not_manager", "this node is not a manager: run the command on a manager")
            return await m.service_logs(request)

        local.router.add_get("/v1/services/{ref}/logs", service_logs)

        async def service_exec(request: web.Request) -> web.StreamResponse:
            m = self._current_manager()
            if m is None:
                from manager.controlapi.errors import HTTPError

                raise HTTPError(503, "not_manager", "this node is not a manager: run the command on a manager")
            return await m.execapi.handle(request)

        local.router.add_get("/v1/exec", service_exec)
        local.freeze()
        self._control = local
        return local

    def _underlay_addr(self) -> str | None:
        """This node's address on the underlay: its advertise address."""
        st = self.membership.state if self.membership is not None else None
        if st is None or not st.advertise_addr:
            return None
        return st.advertise_addr.rpartition(":")[0].strip("[]") or None

    def _current_manager(self) -> Any:
        if self.manager is not None:
            return self.manager
        return self.membership.manager if self.membership is not None else None

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self._local is not None:
            await self._local.cleanup()
        if self.opts.socket_path:
            try:
                os.unlink(self.opts.socket_path)
            except OSError:
                pass
        if self.manager is not None:
            await self.manager.stop()
        if self.membership is not None:
            await self.membership.stop()
        if self.worker is not None:
            await self.worker.stop()
        if self.networks is not None:
            await self.networks.close()
        if self.containers is not None:
            await self.containers.close()
        if self.images is not None:
            await self.images.close()

    async def run_forever(self) -> None:
        await self.start()
        # What recovery loaded (store, log) lives as long as the process: keep
        # it out of the collector's generations so collections stay short.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            while not stop.is_set():
                m = self._current_manager()
                if m is not None and m.raft.fatal is not None:
                    raise SystemExit(f"raft stopped: {m.raft.fatal}")
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.stop()
