"""The node daemon: this host's engine, its local API, and the manager while
the node is one.

The engine (images now; containers with the runtime) always runs; the
manager components run when the node was started as a manager. The local
unix socket serves the engine routes and, on managers, the control API.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.images import ImageService, RegistryConfig

from .localapi import add_cluster_routes, add_container_routes, add_image_routes

log = logging.getLogger(__name__)


@dataclass
class NodeOptions:
    data_dir: str
    socket_path: str | None = "/run/orch/orch.sock"
    insecure_registries: tuple[str, ...] = ()
    registry_auth_file: str | None = None
    manager: Any = None  # manager.process.ManagerOptions when this node is a manager
    runtime: str = "runc"
    cgroup_parent: str = "orch"
    hostname: str | None = None  # reported to the managers (default: the host's name)
    raft_settings: Any = None  # RaftSettings for a manager made by init/join
    dispatcher: Any = None  # DispatcherSettings (heartbeat period) for such a manager
    extra: dict[str, Any] = field(default_factory=dict)


class NodeDaemon:
    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.images: ImageService | None = None
        self.containers: Any = None
        self.volumes: Any = None
        self.manager: Any = None
        self.membership: Any = None
        self.worker: Any = None
        self._local: web.AppRunner | None = None

    async def start(self) -> None:
        from manager.controlapi.errors import error_middleware

        os.makedirs(self.opts.data_dir, exist_ok=True)
        self.images = ImageService(
            os.path.join(self.opts.data_dir, "images"),
            RegistryConfig(
                insecure_registries=tuple(self.opts.insecure_registries),
                auth_file=Path(self.opts.registry_auth_file) if self.opts.registry_auth_file else None,
            ),
        )
        from agent.runtime.runtime import ContainerManager

        self.containers = ContainerManager(
            os.path.join(self.opts.data_dir, "engine"),
            runtime=self.opts.runtime,
            cgroup_parent=self.opts.cgroup_parent,
        )
        # Containers outlive the daemon: adopt the running ones, collect the
        # exit codes of those that ended while it was down.
        await self.containers.recover()
        self.containers.start_supervisor()
        from agent.runtime.volumes import VolumeStore

        self.volumes = VolumeStore(os.path.join(self.opts.data_dir, "engine"))
        local = web.Application(middlewares=[error_middleware], client_max_size=4 << 20)
        add_image_routes(local, self.images)
        add_container_routes(local, self.images, self.containers, self.volumes)
        from dataclasses import replace

        from manager.controlapi.common import ManagerContext
        from manager.controlapi.server import add_routes

        from .cluster import Membership

        self.membership = Membership(self.opts.data_dir, hostname=self.opts.hostname,
                                     settings=self.opts.raft_settings, dispatcher=self.opts.dispatcher)
        self.membership.resolve_image = self.images.resolve
        def control() -> ManagerContext | None:
            # The control API on the local socket follows whichever manager this
            # node runs now (none, a static one, or one from init/join); images
            # are pinned with this node's image service.
            m = self._current_manager()
            return None if m is None else replace(m.control, resolve_image=self.images.resolve)

        add_routes(local, control)
        add_cluster_routes(local, self.membership)

        async def service_logs(request: web.Request) -> web.StreamResponse:
            m = self._current_manager()
            if m is None:
                from manager.controlapi.errors import HTTPError

                raise HTTPError(503, "not_manager", "this node is not a manager: run the command on a manager")
            return await m.service_logs(request)

        local.router.add_get("/v1/services/{ref}/logs", service_logs)
        from .engine import Engine
        from .worker import Worker

        self.worker = Worker(Engine(self.images, self.containers, self.volumes), self.membership.send)
        self.membership.worker = self.worker
        self.worker.start()
        if self.opts.manager is not None:
            from manager.process import ManagerProcess

            self.manager = ManagerProcess(self.opts.manager)
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

    def _current_manager(self) -> Any:
        if self.manager is not None:
            return self.manager
        return self.membership.manager if self.membership is not None else None

    async def stop(self) -> None:
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
