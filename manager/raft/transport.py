"""Raft peer transport: msgpack frames over the manager's one port.

Each manager serves `GET /raft/stream` (a websocket on the same aiohttp
server as the control API, so one port carries everything; TLS wraps it when
the cluster CA is in place). For every peer there is one outbound connection
with its own bounded queue: a full queue drops the message and reports the
peer unreachable, which is what Raft expects of a lossy network (the leader
retries from its progress tracking). Frames batch every message queued since
the last send, so a burst of appends costs one websocket frame per peer.

Reconnects back off exponentially (capped) with jitter so that a dead peer
costs almost nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import msgpack
from aiohttp import web

from .types import Message

log = logging.getLogger(__name__)

RAFT_PATH = "/raft/stream"
MAX_FRAME = 64 << 20


@dataclass
class PeerStats:
    sent_frames: int = 0
    sent_messages: int = 0
    dropped: int = 0
    connects: int = 0
    connected: bool = False


@dataclass
class _Peer:
    node_id: int
    addr: str
    queue: asyncio.Queue[Message]
    task: asyncio.Task[None] | None = None
    stats: PeerStats = field(default_factory=PeerStats)


class Transport:
    """Moves Raft messages between managers.

    `on_message(msg)` is called for every message received; `on_unreachable(id)`
    when a send to a peer fails or is dropped.
    """

    def __init__(
        self,
        node_id: int,
        on_message: Callable[[Message], None],
        on_unreachable: Callable[[int], None],
        *,
        queue_size: int = 4096,
        ssl_context: ssl.SSLContext | None = None,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        advertise_addr: str = "",
        on_peer_addr: Callable[[int, str], None] | None = None,
    ) -> None:
        self.node_id = node_id
        # Sent with every outbound connection so that a manager that is new to
        # the cluster (knowing no one yet) learns how to answer its leader.
        self.advertise_addr = advertise_addr
        self._on_peer_addr = on_peer_addr
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._queue_size = queue_size
        self._ssl = ssl_context
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._peers: dict[int, _Peer] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._inbound: set[web.WebSocketResponse] = set()

    # -- peers -------------------------------------------------------------

    def set_peers(self, peers: dict[int, str]) -> None:
        """Make the peer set equal to `peers` (id -> host:port), minus self."""
        for pid in list(self._peers):
            if pid not in peers or peers[pid] != self._peers[pid].addr:
                self.remove_peer(pid)
        for pid, addr in peers.items():
            if pid != self.node_id and pid not in self._peers:
                self.add_peer(pid, addr)

    def add_peer(self, node_id: int, addr: str) -> None:
        if node_id == self.node_id or node_id in self._peers or self._closed:
            return
        peer = _Peer(node_id, addr, asyncio.Queue(self._queue_size))
        peer.task = asyncio.get_running_loop().create_task(
            self._sender(peer), name=f"raft-send-{node_id}"
        )
        self._peers[node_id] = peer

    def remove_peer(self, node_id: int) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is not None and peer.task is not None:
            peer.task.cancel()

    def peer_stats(self) -> dict[int, PeerStats]:
        return {pid: p.stats for pid, p in self._peers.items()}

    # -- sending -----------------------------------------------------------

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None:
                continue
            try:
                peer.queue.put_nowait(m)
            except asyncio.QueueFull:
                peer.stats.dropped += 1
                self._on_unreachable(m.to)

    async def _sender(self, peer: _Peer) -> None:
        backoff = self._backoff_min
        scheme = "wss" if self._ssl is not None else "ws"
        url = f"{scheme}://{peer.addr}{RAFT_PATH}?from={self.node_id}"
        if self.advertise_addr:
            url += f"&addr={self.advertise_addr}"
        while not self._closed:
            try:
                session = self._client()
                async with session.ws_connect(
                    url,
                    ssl=self._ssl if self._ssl is not None else False,
                    max_msg_size=MAX_FRAME,
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                ) as ws:
                    peer.stats.connects += 1
                    peer.stats.connected = True
                    backoff = self._backoff_min
                    await self._pump(peer, ws)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection refused, reset, TLS failure...
                log.debug("raft peer %d (%s): %s", peer.node_id, peer.addr, e)
            peer.stats.connected = False
            # Messages queued for a dead peer are stale by the time it returns;
            # dropping them (and saying so) lets the leader resend from its log.
            dropped = 0
            while not peer.queue.empty():
                peer.queue.get_nowait()
                dropped += 1
            if dropped:
                peer.stats.dropped += dropped
            self._on_unreachable(peer.node_id)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._backoff_max)

    async def _pump(self, peer: _Peer, ws: aiohttp.ClientWebSocketResponse) -> None:
        q = peer.queue
        while True:
            first = await q.get()
            batch = [first.to_wire()]
            while not q.empty() and len(batch) < 1024:
                batch.append(q.get_nowait().to_wire())
            await ws.send_bytes(msgpack.packb(batch, use_bin_type=True))
            peer.stats.sent_frames += 1
            peer.stats.sent_messages += len(batch)
            if ws.closed:
                raise ConnectionError("websocket closed")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True)
            )
        return self._session

    # -- receiving ---------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for RAFT_PATH."""
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True)
        await ws.prepare(request)
        frm, addr = request.query.get("from", ""), request.query.get("addr", "")
        if frm.isdigit() and addr and self._on_peer_addr is not None:
            self._on_peer_addr(int(frm), addr)
        self._inbound.add(ws)
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.BINARY:
                    continue
                try:
                    batch = msgpack.unpackb(frame.data, raw=False)
                    msgs = [Message.from_wire(w) for w in batch]
                except Exception as e:
                    log.warning("raft: malformed frame from %s: %s", request.remote, e)
                    break
                for m in msgs:
                    if m.to != self.node_id:
                        continue
                    self._on_message(m)
        finally:
            self._inbound.discard(ws)
        return ws

    async def close(self) -> None:
        self._closed = True
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:
                pass
        self._peers.clear()
        for ws in list(self._inbound):
            await ws.close()
        if self._session is not None:
            await self._session.close()
