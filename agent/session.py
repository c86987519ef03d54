"""The agent's side of the dispatcher session.

One websocket at a time to the leader's dispatcher over mutual TLS:
register with this node's description, then heartbeat at the period the
manager asks for, with jitter so a fleet that restarted together does not
beat in lockstep. A follower redirects us to the leader; any failure moves
on to the next known manager with capped, jittered backoff. The list of
managers is refreshed from every session the leader grants.

Frames are the typed models of `api.session`; heartbeat acks are handled
here (period, desired role), every other manager frame goes to `on_message`
(the worker).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from api.objects import NodeDescription
from api.probe import NULL_PROBE, Probe
from api.session import (
    MANAGER_FRAMES,
    MAX_FRAME,
    SESSION_PATH,
    Close,
    Frame,
    Heartbeat,
    HeartbeatAck,
    Redirect,
    Register,
    SessionStarted,
    decode,
    encode,
)

log = logging.getLogger(__name__)


@dataclass
class SessionState:
    connected: bool = False
    manager: str = ""
    session_id: str = ""
    period: float = 5.0
    last_error: str = ""
    heartbeats: int = 0
    rtts: list[float] | None = None  # heartbeat round trips (s), when recording (benchmarks)
    managers: list[str] = field(default_factory=list)


class AgentSession:
    def __init__(
        self,
        managers: list[str],
        ssl_context: ssl.SSLContext | None,
        describe: Callable[[], dict[str, Any] | NodeDescription],
        *,
        addr: str = "",
        on_message: Callable[[Frame], None] | None = None,
        on_managers: Callable[[list[str]], None] | None = None,
        on_role: Callable[[str], None] | None = None,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        rng: random.Random | None = None,
        probe: Probe = NULL_PROBE,
    ) -> None:
        self.state = SessionState(managers=list(managers))
        self.probe = probe
        self.ssl_context = ssl_context
        self.describe = describe
        self.addr = addr
        self.on_message = on_message
        self.on_managers = on_managers
        self.on_role = on_role
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._last_heard = 0.0  # monotonic time of the manager's last frame in this session
        self.rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._leader_hint = ""
        self._hb_sent = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def send(self, frame: Frame) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        await ws.send_bytes(encode(frame))
        return True

    def _description(self) -> NodeDescription | None:
        try:
            d = self.describe()
            return d if isinstance(d, NodeDescription) else NodeDescription.model_validate(d)
        except ValueError as e:  # the manager keeps the description it has
            log.warning("cannot describe this node: %s", e)
            return None

    def _candidates(self) -> list[str]:
        ms = list(dict.fromkeys(self.state.managers))
        self.rng.shuffle(ms)
        if self._leader_hint:
            ms = [self._leader_hint] + [m for m in ms if m != self._leader_hint]
        return ms

    async def _run(self) -> None:
        delay = self.backoff_min
        scheme = "https" if self.ssl_context is not None else "http"
        # A manager that does not answer a connect within a few seconds is
        # tried again later (or another one): the kernel's SYN retries would
        # otherwise hold the session for minutes after a partition heals.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl_context or False),
                                         timeout=timeout) as http:
            while True:
                progressed = False
                for addr in self._candidates():
                    try:
                        progressed |= await self._session(http, f"{scheme}://{addr}{SESSION_PATH}", addr)
                    except asyncio.CancelledError:
                        raise
                    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as e:
                        self.state.last_error = f"{addr}: {e}"
                        log.debug("session with %s failed: %s", addr, e)
                    finally:
                        self.state.connected = False
                        self._ws = None
                    if self._leader_hint and self._leader_hint != addr:
                        break  # go straight to the leader we were told about
                if progressed:
                    delay = self.backoff_min
                else:
                    await asyncio.sleep(delay * self.rng.uniform(0.5, 1.0))
                    delay = min(self.backoff_max, delay * 2)

    async def _session(self, http: aiohttp.ClientSession, url: str, addr: str) -> bool:
        """One session; True if it was established (for backoff)."""
        async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5), max_msg_size=MAX_FRAME,
                                   heartbeat=None) as ws:
            self._ws = ws
            await ws.send_bytes(encode(Register(description=self._description(), addr=self.addr)))
            first = await ws.receive(timeout=15)
            if first.type != aiohttp.WSMsgType.BINARY:
                raise ValueError(f"session refused ({first.type.name})")
            msg = decode(first.data, MANAGER_FRAMES)  # FrameError is a ValueError
            if isinstance(msg, Redirect):
                self._leader_hint = msg.leader
                self.state.last_error = f"{addr} is not the leader"
                return False
            if isinstance(msg, Close):
                self._leader_hint = ""
                raise ValueError(msg.message)
            if not isinstance(msg, SessionStarted):
                raise ValueError(f"unexpected first frame {msg.KIND!r}")
            self._leader_hint = addr
            st = self.state
            st.connected, st.manager, st.session_id = True, addr, msg.session_id
            st.period = msg.period
            st.last_error = ""
            if msg.managers:
                st.managers = list(msg.managers)
                if self.on_managers is not None:
                    self.on_managers(st.managers)
            self._last_heard = time.monotonic()
            beat = asyncio.create_task(self._heartbeat(ws))
            try:
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.BINARY:
                        break
                    self._last_heard = time.monotonic()
                    m = decode(frame.data, MANAGER_FRAMES)
                    if isinstance(m, HeartbeatAck):
                        st.heartbeats += 1
                        if self._hb_sent:
                            rtt = time.monotonic() - self._hb_sent
                            self.probe.heartbeat_rtt(rtt)
                            if st.rtts is not None:
                                st.rtts.append(rtt)
                        st.period = m.period
                        if m.role is not None and self.on_role is not None:
                            self.on_role(m.role.value)
                    elif self.on_message is not None:
                        self.on_message(m)
            finally:
                beat.cancel()
            self._leader_hint = ""  # the session ended: the leader may have changed
            return True

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            # Jitter below the period: never late because of it.
            await asyncio.sleep(self.state.period * self.rng.uniform(0.7, 0.95))
            if time.monotonic() - self._last_heard > max(3 * self.state.period, 2.0):
                # Three periods without a word (acks come every period): the
                # connection is dead (a partition, a hung manager) even if TCP
                # has not noticed. End it and find the leader again.
                log.info("no answer from the manager for %.1f s: reconnecting", time.monotonic() - self._last_heard)
                await ws.close()
                return
            self._hb_sent = time.monotonic()
            await ws.send_bytes(encode(Heartbeat()))
