"""The agent's worker: makes this node's containers match its assignments.

The leader's dispatcher sends the full set of this node's tasks whenever it
changes. For each task the worker converges the engine towards it:

- wanted running and no container yet: pull (PREPARING), create and start
  (STARTING), then RUNNING; a pull that fails is REJECTED, a start that fails
  FAILED, with the engine's message;
- its container ended: COMPLETE on exit 0, else FAILED with the exit code
  (and "OOM killed" when it was); an unhealthy container is stopped and the
  task FAILED;
- wanted stopped (desired state past RUNNING): the container is stopped
  (stop signal, grace period) and the task reported SHUTDOWN;
- a container whose task is no longer assigned is removed.

Containers carry their task id as a label, so after an agent restart the
worker re-adopts the containers the engine recovered and reports what
happened to them meanwhile. Status reports only ever move a task forward
and are batched; after a reconnect everything is reported again (the
manager ignores what it already has).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.engine import Engine, EngineError, RunRequest
from agent.images import ImageError
from agent.runtime.runtime import ContainerRecord, NotFound, RuntimeError_
from api.objects import TaskState

log = logging.getLogger(__name__)

TASK_LABEL = "orch.task.id"


def _container_name(t: dict[str, Any]) -> str:
    svc = t.get("service_name") or t["service_id"][:12]
    return f"{svc}.{t['slot'] or 'g'}.{t['id'][:12]}"


def run_request(t: dict[str, Any]) -> RunRequest:
    c = t["spec"]["container"]
    lim = t["spec"].get("resources", {}).get("limits", {})
    env = {}
    for item in c.get("env") or ():
        k, _, v = str(item).partition("=")
        env[k] = v
    labels = {str(k): str(v) for k, v in dict(c.get("labels") or {}).items()}
    labels.update({TASK_LABEL: t["id"], "orch.service.id": t["service_id"],
                   "orch.service.name": t.get("service_name", ""), "orch.task.slot": str(t.get("slot", 0))})
    return RunRequest(
        image=c["image"], name=_container_name(t),
        command=tuple(c["command"]) if c.get("command") else None,
        args=tuple(c["args"]) if c.get("args") else None,
        env=env, user=c.get("user") or None, workdir=c.get("dir") or None, hostname=c.get("hostname") or None,
        memory=int(lim.get("memory_bytes") or 0), pids_limit=int(lim.get("pids") or 0),
        cpus=float(lim.get("nano_cpus") or 0) / 1e9,
        stop_signal=c.get("stop_signal") or None, stop_grace=float(c.get("stop_grace_period", 10.0)),
        mounts=tuple(dict(m) for m in c.get("mounts") or ()),
        healthcheck=dict(c["healthcheck"]) if c.get("healthcheck") else None,
        read_only=bool(c.get("read_only")), cap_add=tuple(c.get("cap_add") or ()),
        cap_drop=tuple(c.get("cap_drop") or ()), labels=labels,
    )


class Worker:
    def __init__(self, engine: Engine, send: Callable[[dict[str, Any]], Awaitable[bool]]) -> None:
        self.engine = engine
        self.send = send
        self.assigned: dict[str, dict[str, Any]] = {}
        self.state: dict[str, dict[str, Any]] = {}  # task id -> last status we decided
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._outbox: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._log_streams: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        self.engine.containers.on_change = self.container_changed
        self._tasks = [asyncio.create_task(self._flush_loop()), asyncio.create_task(self._reconcile_loop())]

    async def stop(self) -> None:
        for t in [*self._tasks, *self._busy.values()]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._busy.values(), return_exceptions=True)
        self._tasks = []

    # -- input -------------------------------------------------------------------

    def on_message(self, m: dict[str, Any]) -> None:
        if m.get("t") == "logs":
            rid = str(m.get("id"))
            self._log_streams[rid] = asyncio.create_task(self._stream_logs(rid, m))
            return
        if m.get("t") == "logs_cancel":
            t = self._log_streams.pop(str(m.get("id")), None)
            if t is not None:
                t.cancel()
            return
        if m.get("t") == "assign":
            self.assigned = {t["id"]: t for t in m.get("tasks") or [] if isinstance(t, dict) and "id" in t}
            # The manager may lack reports sent before a reconnect: send ours again.
            for tid, t in self.assigned.items():
                st = self.state.get(tid)
                if st is not None and st["state"] > int(t.get("state", 0)):
                    self._outbox[tid] = st
            self._wake.set()
            self._kick.set()

    def _containers_by_task(self) -> dict[str, ContainerRecord]:
        out = {}
        for r in self.engine.containers.list():
            tid = (r.spec.get("labels") or {}).get(TASK_LABEL)
            if tid:
                out[tid] = r
        return out

    # -- reporting -------------------------------------------------------------------

    def _report(self, tid: str, state: TaskState, message: str = "", err: str = "",
                exit_code: int | None = None, container_id: str = "") -> None:
        prev = self.state.get(tid)
        if prev is not None and prev["state"] >= int(state):
            return
        u = {"id": tid, "state": int(state), "message": message, "err": err, "timestamp": time.time(),
             "exit_code": exit_code, "container_id": container_id or (prev or {}).get("container_id", "")}
        self.state[tid] = u
        self._outbox[tid] = u
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.02)  # coalesce
            if not self._outbox:
                continue
            batch, self._outbox = self._outbox, {}
            try:
                ok = await self.send({"t": "status", "updates": list(batch.values())})
            except Exception:  # the connection dropped mid-send
                ok = False
            if not ok:
                for k, v in batch.items():
                    self._outbox.setdefault(k, v)
                await asyncio.sleep(0.5)
                self._wake.set()

    # -- convergence -------------------------------------------------------------------

    def container_changed(self, rec: ContainerRecord) -> None:
        tid = (rec.spec.get("labels") or {}).get(TASK_LABEL)
        if not tid:
            return
        self._observe(tid, rec)
        hs = rec.health_state or {}
        if rec.status == "running" and hs.get("status") == "unhealthy" and tid not in self._busy:
            self._busy[tid] = asyncio.create_task(self._stop_unhealthy(tid, rec))
        self._kick.set()

    def _observe(self, tid: str, rec: ContainerRecord) -> None:
        t = self.assigned.get(tid)
        if rec.status == "exited":
            wanted_down = t is not None and int(t["desired_state"]) > TaskState.RUNNING
            hs = rec.health_state or {}
            if self.state.get(tid, {}).get("err") == "unhealthy container":
                return
            if wanted_down:
                self._report(tid, TaskState.SHUTDOWN, "shut down", exit_code=rec.exit_code, container_id=rec.id)
            elif rec.exit_code == 0:
                self._report(tid, TaskState.COMPLETE, "finished", exit_code=0, container_id=rec.id)
            else:
                why = "OOM killed" if rec.oom_killed else rec.error or f"task: non-zero exit ({rec.exit_code})"
                if hs.get("status") == "unhealthy":
                    why = "unhealthy container"
                self._report(tid, TaskState.FAILED, "failed", err=why, exit_code=rec.exit_code, container_id=rec.id)
        elif rec.status == "running":
            self._report(tid, TaskState.RUNNING, "started", container_id=rec.id)

    async def _stop_unhealthy(self, tid: str, rec: ContainerRecord) -> None:
        try:
            self._report(tid, TaskState.FAILED, "failed", err="unhealthy container", container_id=rec.id)
            await self.engine.containers.stop(rec.id)
        except (RuntimeError_, NotFound):
            pass
        finally:
            self._busy.pop(tid, None)

    async def _stream_logs(self, rid: str, m: dict[str, Any]) -> None:
        """Send the logs of the requested tasks' containers to the manager,
        a batch of lines per frame; each task's stream ends with log_end."""
        by_task = self._containers_by_task()
        tail = m.get("tail") if isinstance(m.get("tail"), int) else None

        async def one(tid: str) -> None:
            rec = by_task.get(tid)
            if rec is None:
                await self.send({"t": "log_end", "id": rid, "task": tid, "error": "no container on this node"})
                return
            batch: list[list[str]] = []

            async def flusher() -> None:
                nonlocal batch
                while True:
                    await asyncio.sleep(0.1)
                    if batch:
                        out, batch = batch, []
                        await self.send({"t": "log", "id": rid, "task": tid, "lines": out})

            fl = asyncio.create_task(flusher())
            try:
                async for ts, stream, line in self.engine.containers.logs(rec.id, follow=bool(m.get("follow")),
                                                                          tail=tail):
                    batch.append([ts, stream, line])
                    if len(batch) >= 500:
                        out, batch = batch, []
                        await self.send({"t": "log", "id": rid, "task": tid, "lines": out})
            except NotFound:
                pass
            finally:
                fl.cancel()
            if batch:
                await self.send({"t": "log", "id": rid, "task": tid, "lines": batch})
            await self.send({"t": "log_end", "id": rid, "task": tid})

        try:
            await asyncio.gather(*(one(str(t)) for t in m.get("tasks") or []))
        finally:
            self._log_streams.pop(rid, None)

    async def _reconcile_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("worker reconciliation failed")
                await asyncio.sleep(1)
                self._kick.set()

    async def reconcile(self) -> None:
        by_task = self._containers_by_task()
        for tid, t in self.assigned.items():
            if tid in self._busy:
                continue
            rec = by_task.get(tid)
            want_running = int(t["desired_state"]) <= TaskState.RUNNING
            if rec is not None:
                self._observe(tid, rec)
                if not want_running and rec.status != "exited":
                    self._busy[tid] = asyncio.create_task(self._stop(tid, rec))
            elif want_running:
                if self.state.get(tid, {}).get("state", 0) > TaskState.RUNNING:
                    continue  # ended and already reported; the container is gone
                self._busy[tid] = asyncio.create_task(self._start(tid, t))
            else:
                self._report(tid, TaskState.SHUTDOWN, "shut down before it started")
        for tid, rec in by_task.items():
            if tid not in self.assigned and tid not in self._busy:
                self._busy[tid] = asyncio.create_task(self._remove(tid, rec))
        for tid in [k for k in self.state if k not in self.assigned and k not in by_task]:
            del self.state[tid]

    async def _start(self, tid: str, t: dict[str, Any]) -> None:
        try:
            self._report(tid, TaskState.ACCEPTED, "accepted")
            try:
                req = run_request(t)
            except ValueError as e:
                self._report(tid, TaskState.REJECTED, "rejected", err=f"invalid task spec: {e}")
                return
            self._report(tid, TaskState.PREPARING, "preparing")
            try:
                await self.engine.ensure_image(req.image)
            except ImageError as e:
                self._report(tid, TaskState.REJECTED, "rejected", err=str(e))
                return
            self._report(tid, TaskState.STARTING, "starting")
            try:
                rec = await self.engine.run(req, files=list(t.get("files") or []))
            except (EngineError, ImageError) as e:
                self._report(tid, TaskState.FAILED, "failed", err=str(e))
                return
            self._observe(tid, rec)
        finally:
            self._busy.pop(tid, None)
            self._kick.set()

    async def _stop(self, tid: str, rec: ContainerRecord) -> None:
        try:
            await self.engine.containers.stop(rec.id)
            self._observe(tid, rec)
        except (RuntimeError_, NotFound) as e:
            log.warning("stopping task %s: %s", tid, e)
        finally:
            self._busy.pop(tid, None)
            self._kick.set()

    async def _remove(self, tid: str, rec: ContainerRecord) -> None:
        try:
            await self.engine.remove(rec.id, force=True)
        except (RuntimeError_, NotFound) as e:
            log.warning("removing the container of task %s: %s", tid, e)
        finally:
            self._busy.pop(tid, None)
