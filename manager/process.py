"""The manager: a Raft replica of the store behind the control API.

One aiohttp application serves the control API and the Raft peer stream on
the manager's one TCP port. The node daemon adds the same control routes to
its root-only unix socket for the local CLI (`add_control_routes`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from aiohttp import web

from manager.raft.driver import RaftNode, RaftSettings
from manager.raft.transport import RAFT_PATH
from manager.store import MemoryStore

from .controlapi.server import add_routes, build_app

log = logging.getLogger(__name__)


@dataclass
class ManagerOptions:
    node_id: int
    data_dir: str
    listen_addr: str = "0.0.0.0:4242"
    advertise_addr: str | None = None
    initial_cluster: dict[int, str] = field(default_factory=dict)
    settings: RaftSettings = field(default_factory=RaftSettings)


def parse_addr(addr: str, default_port: int = 4242) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in address {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        )
        self.app = build_app(self.raft, self.store)
        self.app.router.add_get(RAFT_PATH, self.raft.transport.handle)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        os.makedirs(self.opts.data_dir, exist_ok=True)
        self.raft.open()
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        host, port = parse_addr(self.opts.listen_addr)
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        await self.raft.start()
        log.info("manager %d serving on %s", self.opts.node_id, self.opts.listen_addr)

    def add_control_routes(self, app: web.Application) -> None:
        add_routes(app, self.raft, self.store)

    async def stop(self) -> None:
        await self.raft.stop()
        if self._runner is not None:
            await self._runner.cleanup()
