"""The manager process: a Raft replica of the store behind the control API.

One aiohttp application serves the control API and the Raft peer stream on
the manager's one TCP port, and the same control API on a root-only unix
socket for the local CLI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from dataclasses import dataclass, field

from aiohttp import web

from manager.raft.driver import RaftNode, RaftSettings
from manager.raft.transport import RAFT_PATH
from manager.store import MemoryStore

from .controlapi.server import build_app

log = logging.getLogger(__name__)


@dataclass
class ManagerOptions:
    node_id: int
    data_dir: str
    listen_addr: str = "0.0.0.0:4242"
    advertise_addr: str | None = None
    initial_cluster: dict[int, str] = field(default_factory=dict)
    socket_path: str | None = None
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
        if self.opts.socket_path:
            path = self.opts.socket_path
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
            site = web.UnixSite(self._runner, path)
            await site.start()
            os.chmod(path, 0o600)  # root-only: the socket is full control
        await self.raft.start()
        log.info("manager %d serving on %s", self.opts.node_id, self.opts.listen_addr)

    async def stop(self) -> None:
        await self.raft.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.opts.socket_path and os.path.exists(self.opts.socket_path):
            try:
                os.unlink(self.opts.socket_path)
            except OSError:
                pass

    async def run_forever(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            while not stop.is_set():
                if self.raft.fatal is not None:
                    raise SystemExit(f"raft stopped: {self.raft.fatal}")
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.stop()
