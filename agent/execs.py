"""The agent's side of `orch service exec`: processes the manager asked to
run in this node's task containers, driven by the exec frames of the
session (`api.session.ExecStart` ... `ExecExit`).

Output goes to the manager as `ExecOutput` frames, at most `EXEC_WINDOW`
bytes ahead of the manager's `ExecOutputAck`s, so a process writing fast
(`cat` of a big file) waits for the user instead of filling the session;
input is written to the process and acknowledged with `ExecInputAck`. The
exec ends with one `ExecExit` after all of its output: the exit status, or
why the process could not run. The processes of a session that ended are
killed when the next one starts (`cancel_all`: nobody reads them any more)
and when the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.runtime.execproc import ExecProcess
from agent.runtime.runtime import ContainerRecord, NotFound, RuntimeError_
from api.session import (
    EXEC_WINDOW,
    ExecCancel,
    ExecExit,
    ExecInput,
    ExecInputAck,
    ExecOutput,
    ExecOutputAck,
    ExecResize,
    ExecStart,
    Frame,
)

log = logging.getLogger(__name__)

MAX_EXECS = 64  # processes at once per node; more are refused with a message


@dataclass
class _Exec:
    proc: ExecProcess | None = None
    unacked: int = 0
    window: asyncio.Event = field(default_factory=asyncio.Event)
    inputs: asyncio.Queue[ExecInput | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class Execs:
    """Exec processes of this node, by exec id.

    `find(task_id)` is the task's container here (None when there is none);
    `spawn(container_id, start)` makes the process (not started);
    `send(frame)` sends to the manager."""

    def __init__(self, send: Callable[[Frame], Awaitable[bool]],
                 find: Callable[[str], ContainerRecord | None],
                 spawn: Callable[[str, ExecStart], ExecProcess]) -> None:
        self.send = send
        self.find = find
        self.spawn = spawn
        self.running: dict[str, _Exec] = {}

    def on_frame(self, m: Frame) -> None:
        if isinstance(m, ExecStart):
            if m.id in self.running:
                log.warning("exec %s started twice; ignored", m.id)
                return
            if len(self.running) >= MAX_EXECS:
                self._detached(self.send(ExecExit(id=m.id, error=f"too many exec processes on this node "
                                                                  f"({MAX_EXECS}); try again later")))
                return
            ex = self.running[m.id] = _Exec()
            ex.window.set()
            ex.task = asyncio.create_task(self._run(m, ex))
            return
        ex = self.running.get(getattr(m, "id", ""))
        if ex is None:
            return  # ended already: late input or acks
        if isinstance(m, ExecInput):
            ex.inputs.put_nowait(m)
        elif isinstance(m, ExecOutputAck):
            ex.unacked = max(0, ex.unacked - m.n)
            if ex.unacked < EXEC_WINDOW:
                ex.window.set()
        elif isinstance(m, ExecResize):
            if ex.proc is not None:
                ex.proc.resize(m.width, m.height)
        elif isinstance(m, ExecCancel):
            if ex.task is not None:
                ex.task.cancel()

    @staticmethod
    def _detached(coro: Awaitable[bool]) -> None:
        asyncio.ensure_future(coro)

    def cancel_all(self) -> None:
        """Kill every exec process (the session that asked for them ended)."""
        for ex in self.running.values():
            if ex.task is not None:
                ex.task.cancel()

    async def stop(self) -> None:
        """Kill every exec process and wait until they are gone."""
        tasks = [ex.task for ex in self.running.values() if ex.task is not None]
        self.cancel_all()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, m: ExecStart, ex: _Exec) -> None:
        exit_frame = ExecExit(id=m.id, error="exec cancelled")
        writer: asyncio.Task[None] | None = None
        try:
            rec = self.find(m.task)
            if rec is None:
                exit_frame = ExecExit(id=m.id, error=f"task {m.task} has no container on this node")
                return
            ex.proc = self.spawn(rec.id, m)
            try:
                await ex.proc.start()
            except (RuntimeError_, NotFound) as e:
                exit_frame = ExecExit(id=m.id, error=f"task {m.task}: {e}")
                return
            writer = asyncio.create_task(self._inputs(m.id, ex))
            while (chunk := await ex.proc.read()) is not None:
                await ex.window.wait()
                stream, data = chunk
                ex.unacked += len(data)
                if ex.unacked >= EXEC_WINDOW:
                    ex.window.clear()
                if not await self.send(ExecOutput(id=m.id, stream=1 if stream == 1 else 2, data=data)):
                    return  # no session: nobody to tell
            exit_frame = ExecExit(id=m.id, code=await ex.proc.wait())
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a failing exec must not take the worker down
            log.exception("exec %s failed", m.id)
            exit_frame = ExecExit(id=m.id, error=f"exec failed on the node: {e}")
        finally:
            if writer is not None:
                writer.cancel()
            if ex.proc is not None:
                await ex.proc.close()
            self.running.pop(m.id, None)
            with contextlib.suppress(Exception):
                await self.send(exit_frame)

    async def _inputs(self, xid: str, ex: _Exec) -> None:
        assert ex.proc is not None
        while (i := await ex.inputs.get()) is not None:
            if i.data:
                await ex.proc.write(i.data)
                await self.send(ExecInputAck(id=xid, n=len(i.data)))
            if i.eof:
                await ex.proc.close_stdin()
