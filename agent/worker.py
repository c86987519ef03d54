"""The agent's worker: makes this node's containers match its assignments.

The leader's dispatcher sends this node's assignment set once per session
(`AssignmentsFull`), then the changes to it (`AssignmentChanges`): tasks as
`api.objects.Task` models, and the secrets and configs they use. The worker
keeps the current set (`AssignmentSet`) and converges the engine towards it,
through `TaskEngine`, the few engine operations it needs:

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
and are batched; after a reconnect (a new full set) every report the
manager lacks is sent again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.engine import EngineError, RunRequest, TaskFile
from agent.execs import Execs
from agent.runtime.execproc import ExecProcess
from agent.images import ImageError
from agent.networking import NetworkSetupError, TaskNetworks, is_ingress_sandbox
from agent.runtime.runtime import ContainerRecord, NotFound, RuntimeError_
from api.objects import Config, Network, Secret, Task, TaskState
from api.session import (
    AssignmentChanges,
    AssignmentsFull,
    ConfigRemove,
    ConfigUpdate,
    Endpoint,
    EndpointRemove,
    EndpointUpdate,
    EXEC_MANAGER_FRAMES,
    ExecStart,
    Frame,
    NetworkRemove,
    NetworkUpdate,
    LogCancel,
    LogEnd,
    LogLines,
    LogRequest,
    AttachRequest,
    AttachResult,
    SecretRemove,
    SecretUpdate,
    StatusBatch,
    StatusUpdate,
    TaskRemove,
    TaskUpdate,
)

log = logging.getLogger(__name__)

TASK_LABEL = "orch.task.id"
ATTACHMENT_LABEL = "orch.attachment.id"  # a plain container on networks: its attachment task


class AttachError(Exception):
    """A plain container could not be put on its networks; the message says why."""
LOG_BATCH = 500  # lines per log frame at most


class TaskEngine(Protocol):
    """What the worker needs of the container engine (`agent.engine.Engine`)."""

    def list_containers(self) -> list[ContainerRecord]: ...

    def subscribe(self, callback: Callable[[ContainerRecord], None]) -> None:
        """Call `callback` whenever a container changes (starts, exits, health)."""

    async def ensure_image(self, ref: str) -> Any:
        """Pull the image unless this node has it; raises ImageError."""

    async def run(self, req: RunRequest, *, files: list[TaskFile] | None = None) -> ContainerRecord:
        """Create and start; raises ImageError or EngineError."""

    async def stop(self, cid: str) -> int | None: ...

    async def remove(self, cid: str, force: bool = False) -> None: ...

    def logs(self, cid: str, *, follow: bool = False, tail: int | None = None
             ) -> AsyncIterator[tuple[str, str, str]]: ...

    def exec_process(self, cid: str, start: ExecStart) -> ExecProcess: ...


@dataclass
class AssignmentSet:
    """This node's assignments as the manager sent them."""

    tasks: dict[str, TaskUpdate] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)
    configs: dict[str, Config] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Endpoint]] = field(default_factory=dict)  # network -> task -> entry

    def apply(self, frame: AssignmentsFull | AssignmentChanges) -> None:
        if isinstance(frame, AssignmentsFull):
            self.tasks.clear()
            self.secrets.clear()
            self.configs.clear()
            self.networks.clear()
            self.endpoints.clear()
        for c in frame.changes:
            if isinstance(c, TaskUpdate):
                self.tasks[c.task.id] = c
            elif isinstance(c, TaskRemove):
                self.tasks.pop(c.id, None)
            elif isinstance(c, SecretUpdate):
                self.secrets[c.secret.id] = c.secret
            elif isinstance(c, SecretRemove):
                self.secrets.pop(c.id, None)
            elif isinstance(c, ConfigUpdate):
                self.configs[c.config.id] = c.config
            elif isinstance(c, ConfigRemove):
                self.configs.pop(c.id, None)
            elif isinstance(c, NetworkUpdate):
                self.networks[c.network.id] = c.network
                self.endpoints.setdefault(c.network.id, {})
            elif isinstance(c, NetworkRemove):
                self.networks.pop(c.id, None)
                self.endpoints.pop(c.id, None)
            elif isinstance(c, EndpointUpdate):
                self.endpoints.setdefault(c.endpoint.network_id, {})[c.endpoint.task_id] = c.endpoint
            elif isinstance(c, EndpointRemove):
                self.endpoints.get(c.network_id, {}).pop(c.task_id, None)

    def files(self, task: Task) -> list[TaskFile]:
        """The secret and config files of a task, at their targets. A
        reference the manager sent no object for (it could not open the
        secret) is left out, as before change frames."""
        out: list[TaskFile] = []
        c = task.spec.container
        for r in c.secrets:
            s = self.secrets.get(r.secret_id)
            if s is None:
                log.warning("task %s: secret %s was not sent to this node; its file is left out", task.id,
                            r.secret_name)
                continue
            out.append(TaskFile(kind="secret", target=r.target or f"/run/secrets/{r.secret_name}",
                                data=s.spec.data, uid=r.uid, gid=r.gid, mode=r.mode))
        for cr in c.configs:
            cfg = self.configs.get(cr.config_id)
            if cfg is None:
                log.warning("task %s: config %s was not sent to this node; its file is left out", task.id,
                            cr.config_name)
                continue
            out.append(TaskFile(kind="config", target=cr.target or f"/{cr.config_name}",
                                data=cfg.spec.data, uid=cr.uid, gid=cr.gid, mode=cr.mode))
        return out


def _container_name(a: TaskUpdate) -> str:
    t = a.task
    svc = a.service_name or t.service_id[:12]
    return f"{svc}.{t.slot or 'g'}.{t.id[:12]}"


def run_request(a: TaskUpdate) -> RunRequest:
    """The engine request for an assigned task's container."""
    t = a.task
    c = t.spec.container
    lim = t.spec.resources.limits
    env = {}
    for item in c.env:
        k, _, v = item.partition("=")
        env[k] = v
    labels = dict(c.labels)
    labels.update({TASK_LABEL: t.id, "orch.service.id": t.service_id,
                   "orch.service.name": a.service_name, "orch.task.slot": str(t.slot)})
    return RunRequest(
        image=c.image, name=_container_name(a),
        command=c.command or None, args=c.args or None,
        env=env, user=c.user or None, workdir=c.dir or None, hostname=c.hostname or None,
        memory=lim.memory_bytes, pids_limit=lim.pids, cpus=lim.nano_cpus / 1e9,
        stop_signal=c.stop_signal or None, stop_grace=c.stop_grace_period,
        mounts=c.mounts, healthcheck=c.healthcheck,
        read_only=c.read_only, cap_add=c.cap_add, cap_drop=c.cap_drop, labels=labels,
        privileged=c.privileged, devices=tuple(d.text() for d in c.devices), sysctls=dict(c.sysctls),
        ulimits=tuple(f"{u.name}={u.soft}:{u.hard}" for u in c.ulimits), init=c.init,
    )


def _own_address(task: Task) -> str | None:
    """The container's address on its first network (its /etc/hosts entry)."""
    if task.networks and task.networks[0].addresses:
        return task.networks[0].addresses[0].split("/")[0]
    return None


DRAIN = 1.0
"""Seconds a networked task wanted stopped keeps running before its stop
signal: the managers took it out of every load-balancing set when it was
wanted stopped, and peers stop sending it new connections within a round trip;
stopping it only then means no client sees a refused connection during a
rolling update or a scale-down."""


class Worker:
    def __init__(self, engine: TaskEngine, send: Callable[[Frame], Awaitable[bool]],
                 networks: TaskNetworks | None = None, *, drain: float = DRAIN) -> None:
        self.engine = engine
        self.send = send
        self.execs = Execs(send, lambda tid: self._containers_by_task().get(tid),
                           lambda cid, start: self.engine.exec_process(cid, start))
        self.networks = networks  # None: this node runs no overlay networking (tasks on networks are rejected)
        self.drain = drain
        self.assigned = AssignmentSet()
        self.state: dict[str, StatusUpdate] = {}  # task id -> last status we decided
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._outbox: dict[str, StatusUpdate] = {}
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._log_streams: dict[str, asyncio.Task[None]] = {}
        self._attach_waits: dict[str, asyncio.Future[AttachResult]] = {}
        self._attaching: set[str] = set()  # attachment tasks whose container is being started
        # Until the first full set of this process arrives, what is assigned is
        # unknown: nothing may be removed (a restarted daemon would otherwise
        # remove every container it recovered on its first container event).
        self._synced = False

    def start(self) -> None:
        self.engine.subscribe(self.container_changed)
        self._tasks = [asyncio.create_task(self._flush_loop()), asyncio.create_task(self._reconcile_loop())]

    async def stop(self) -> None:
        for t in [*self._tasks, *self._busy.values(), *self._log_streams.values()]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._busy.values(), *self._log_streams.values(),
                             return_exceptions=True)
        self._tasks = []
        await self.execs.stop()

    async def leave(self, timeout: float = 60.0) -> None:
        """The node left its cluster: nothing is assigned any more. Remove
        every task container, then everything overlay networking made."""
        self.assigned.apply(AssignmentsFull())
        self._synced = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.reconcile()
            if self._busy:
                await asyncio.gather(*list(self._busy.values()), return_exceptions=True)
                continue
            if not self._containers_by_task():
                break
            await asyncio.sleep(0.1)
        if self.networks is not None:
            await self.networks.teardown()

    # -- input -------------------------------------------------------------------

    def on_message(self, m: Frame) -> None:
        if isinstance(m, AttachResult):
            fut = self._attach_waits.pop(m.id, None)
            if fut is not None and not fut.done():
                fut.set_result(m)
            return
        if isinstance(m, EXEC_MANAGER_FRAMES):
            self.execs.on_frame(m)
            return
        if isinstance(m, LogRequest):
            self._log_streams[m.id] = asyncio.create_task(self._stream_logs(m))
        elif isinstance(m, LogCancel):
            t = self._log_streams.pop(m.id, None)
            if t is not None:
                t.cancel()
        elif isinstance(m, (AssignmentsFull, AssignmentChanges)):
            self.assigned.apply(m)
            if isinstance(m, AssignmentsFull):
                self._synced = True
                self.execs.cancel_all()  # a new session: nobody reads the old one's processes
                # A new session: the manager may lack reports sent before it. Send ours again.
                for tid, a in self.assigned.tasks.items():
                    st = self.state.get(tid)
                    if st is not None and st.state > a.task.status.state:
                        self._outbox[tid] = st
                self._wake.set()
            self._kick.set()
        else:
            log.warning("unexpected %r frame from the manager; ignored", m.KIND)

    def _containers_by(self, *labels: str) -> list[dict[str, ContainerRecord]]:
        """For each label, its value (a task id) -> the container carrying it;
        one listing of the engine's containers for all of them."""
        out: list[dict[str, ContainerRecord]] = [{} for _ in labels]
        for r in self.engine.list_containers():
            have = r.spec.get("labels") or {}
            for i, label in enumerate(labels):
                if have.get(label):
                    out[i][have[label]] = r
        return out

    def _containers_by_task(self) -> dict[str, ContainerRecord]:
        return self._containers_by(TASK_LABEL)[0]

    def _follow_attachment(self, tid: str, rec: ContainerRecord | None) -> None:
        """An attachment lives as long as its container: RUNNING while it
        runs, COMPLETE once it exited or is gone (the manager then removes it
        and, with it, the container's addresses)."""
        if rec is not None and rec.status == "running":
            self._report(tid, TaskState.RUNNING, "attached", container_id=rec.id)
        elif rec is not None and rec.status == "exited":
            self._report(tid, TaskState.COMPLETE, "container exited", container_id=rec.id)
        elif rec is None and tid not in self._attaching:
            self._report(tid, TaskState.COMPLETE, "container removed")

    async def attach(self, container: str, networks: list[str], timeout: float = 30.0) -> Task:
        """A network attachment task for a plain container of this node, once
        the managers allocated its addresses and sent it here. Raises
        AttachError. The caller starts the container (see `prepare_attachment`)."""
        rid = f"{container}-{time.monotonic_ns()}"
        fut: asyncio.Future[AttachResult] = asyncio.get_running_loop().create_future()
        self._attach_waits[rid] = fut
        try:
            if not await self.send(AttachRequest(id=rid, container=container, networks=tuple(networks))):
                raise AttachError("this node is not connected to a manager (is it part of a cluster?)")
            async with asyncio.timeout(timeout):
                res = await fut
                if res.error:
                    raise AttachError(res.error)
                self._attaching.add(res.task_id)
                while True:
                    a = self.assigned.tasks.get(res.task_id)
                    if a is not None and a.task.networks:
                        return a.task
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AttachError(f"no network attachment within {timeout:g} s (are the managers up?)") from None
        finally:
            self._attach_waits.pop(rid, None)

    async def prepare_attachment(self, task: Task) -> str:
        """The attachment's network namespace, programmed; its path."""
        if self.networks is None:
            raise AttachError("this node runs no overlay networking")
        try:
            return await self.networks.prepare(task, [x.task for x in self.assigned.tasks.values()],
                                               self.assigned.networks, self.assigned.endpoints)
        except NetworkSetupError as e:
            raise AttachError(str(e)) from e

    def attachment_done(self, task_id: str) -> None:
        """The container of an attachment was started, or failed to: from now
        on the attachment follows the container."""
        self._attaching.discard(task_id)
        self._kick.set()

    # -- reporting -------------------------------------------------------------------

    def _report(self, tid: str, state: TaskState, message: str = "", err: str = "",
                exit_code: int | None = None, container_id: str = "") -> None:
        prev = self.state.get(tid)
        if prev is not None and (prev.state > state or (prev.state == state and prev.message == message)):
            return  # forward only; the same state may say something new
        u = StatusUpdate(id=tid, state=state, message=message, err=err, timestamp=time.time(),
                         exit_code=exit_code, container_id=container_id or (prev.container_id if prev else ""))
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
                ok = await self.send(StatusBatch(updates=tuple(batch.values())))
            except Exception:  # the connection dropped mid-send
                ok = False
            if not ok:
                for k, v in batch.items():
                    self._outbox.setdefault(k, v)
                await asyncio.sleep(0.5)
                self._wake.set()

    # -- convergence -------------------------------------------------------------------

    def container_changed(self, rec: ContainerRecord) -> None:
        labels = rec.spec.get("labels") or {}
        if labels.get(ATTACHMENT_LABEL):
            self._kick.set()  # its attachment follows it (RUNNING, then COMPLETE)
            return
        tid = labels.get(TASK_LABEL)
        if not tid:
            return
        self._observe(tid, rec)
        hs = rec.health_state or {}
        if rec.status == "running" and hs.get("status") == "unhealthy" and tid not in self._busy:
            self._busy[tid] = asyncio.create_task(self._stop_unhealthy(tid, rec))
        self._kick.set()

    def _observe(self, tid: str, rec: ContainerRecord) -> None:
        a = self.assigned.tasks.get(tid)
        if rec.status == "exited":
            wanted_down = a is not None and a.task.desired_state > TaskState.RUNNING
            hs = rec.health_state or {}
            st = self.state.get(tid)
            if st is not None and st.err == "unhealthy container":
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
            hs = rec.health_state or {}
            if hs.get("status") == "starting":
                # As Swarm: a task with a health check is RUNNING (a backend of
                # its service, a finished start-first replacement) only once its
                # check passed; an unhealthy one is stopped (container_changed).
                self._report(tid, TaskState.STARTING, "waiting for the health check", container_id=rec.id)
            else:
                self._report(tid, TaskState.RUNNING, "started", container_id=rec.id)

    async def _stop_unhealthy(self, tid: str, rec: ContainerRecord) -> None:
        try:
            self._report(tid, TaskState.FAILED, "failed", err="unhealthy container", container_id=rec.id)
            await self.engine.stop(rec.id)
        except (RuntimeError_, NotFound):
            pass
        finally:
            self._busy.pop(tid, None)

    async def _stream_logs(self, req: LogRequest) -> None:
        """Send the logs of the requested tasks' containers to the manager,
        a batch of lines per frame; each task's stream ends with LogEnd."""
        by_task = self._containers_by_task()

        async def one(tid: str) -> None:
            rec = by_task.get(tid)
            if rec is None:
                await self.send(LogEnd(id=req.id, task=tid, error="no container on this node"))
                return
            batch: list[tuple[str, str, str]] = []

            async def flusher() -> None:
                nonlocal batch
                while True:
                    await asyncio.sleep(0.1)
                    if batch:
                        out, batch = batch, []
                        await self.send(LogLines(id=req.id, task=tid, lines=tuple(out)))

            fl = asyncio.create_task(flusher())
            try:
                async for ts, stream, line in self.engine.logs(rec.id, follow=req.follow, tail=req.tail):
                    batch.append((ts, stream, line))
                    if len(batch) >= LOG_BATCH:
                        out, batch = batch, []
                        await self.send(LogLines(id=req.id, task=tid, lines=tuple(out)))
            except NotFound:
                pass
            finally:
                fl.cancel()
            if batch:
                await self.send(LogLines(id=req.id, task=tid, lines=tuple(batch)))
            await self.send(LogEnd(id=req.id, task=tid))

        try:
            await asyncio.gather(*(one(t) for t in req.tasks))
        finally:
            self._log_streams.pop(req.id, None)

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
        if not self._synced:
            return
        by_task, attached = self._containers_by(TASK_LABEL, ATTACHMENT_LABEL)
        for tid, a in self.assigned.tasks.items():
            if is_ingress_sandbox(a.task):
                self._ingress_sandbox(tid, a)
                continue
            if a.task.attachment:
                self._follow_attachment(tid, attached.get(tid))
                continue
            if tid in self._busy:
                continue
            rec = by_task.get(tid)
            want_running = a.task.desired_state <= TaskState.RUNNING
            if rec is not None:
                self._observe(tid, rec)
                if not want_running and rec.status != "exited":
                    self._busy[tid] = asyncio.create_task(self._stop(tid, rec))
            elif want_running:
                st = self.state.get(tid)
                if st is not None and st.state > TaskState.RUNNING:
                    continue  # ended and already reported; the container is gone
                self._busy[tid] = asyncio.create_task(self._start(tid, a))
            else:
                self._report(tid, TaskState.SHUTDOWN, "shut down before it started")
        for tid, rec in by_task.items():
            if tid not in self.assigned.tasks and tid not in self._busy:
                self._busy[tid] = asyncio.create_task(self._remove(tid, rec))
        for tid in [k for k in self.state if k not in self.assigned.tasks and k not in by_task]:
            del self.state[tid]
        if self.networks is not None:
            # Peers and sandboxes follow the endpoint tables; namespaces of tasks
            # that are neither assigned nor running here any more go.
            keep = set(self.assigned.tasks) | set(by_task) | set(self._busy) | set(attached) | self._attaching
            try:
                await self.networks.sync([a.task for a in self.assigned.tasks.values()], self.assigned.networks,
                                         self.assigned.endpoints, keep)
            except Exception as e:  # a bad table or kernel error must not stop task reconciliation
                log.warning("overlay networks not in sync: %s", e)

    def _ingress_sandbox(self, tid: str, a: TaskUpdate) -> None:
        """The node's ingress sandbox: a namespace on the ingress network,
        RUNNING once programmed; it has no container, and its namespace
        (kept while the task is assigned) goes when the task does."""
        if tid in self._busy:
            return
        st = self.state.get(tid)
        if a.task.desired_state > TaskState.RUNNING:
            if st is None or not st.state.terminal:
                self._report(tid, TaskState.SHUTDOWN, "ingress sandbox removed")
            return
        if self.networks is None:
            self._report(tid, TaskState.REJECTED, "rejected", err="this node runs no overlay networking")
            return
        if st is not None and st.state.terminal:
            return
        if st is not None and st.state == TaskState.RUNNING and self.networks.has_netns(tid):
            return
        self._busy[tid] = asyncio.create_task(self._start_ingress_sandbox(tid, a))

    async def _start_ingress_sandbox(self, tid: str, a: TaskUpdate) -> None:
        try:
            assert self.networks is not None
            await self.networks.prepare(a.task, [x.task for x in self.assigned.tasks.values()],
                                        self.assigned.networks, self.assigned.endpoints)
            self._report(tid, TaskState.RUNNING, "ingress sandbox ready")
        except NetworkSetupError as e:
            self._report(tid, TaskState.FAILED, "failed", err=f"ingress sandbox: {e}")
        finally:
            self._busy.pop(tid, None)
            self._kick.set()

    async def _start(self, tid: str, a: TaskUpdate) -> None:
        try:
            self._report(tid, TaskState.ACCEPTED, "accepted")
            try:
                req = run_request(a)
            except ValueError as e:
                self._report(tid, TaskState.REJECTED, "rejected", err=f"invalid task spec: {e}")
                return
            self._report(tid, TaskState.PREPARING, "preparing")
            try:
                await self.engine.ensure_image(req.image)
            except ImageError as e:
                self._report(tid, TaskState.REJECTED, "rejected", err=str(e))
                return
            if a.task.networks:
                if self.networks is None:
                    self._report(tid, TaskState.REJECTED, "rejected",
                                 err="this node runs no overlay networking")
                    return
                try:
                    path = await self.networks.prepare(
                        a.task, [x.task for x in self.assigned.tasks.values()], self.assigned.networks,
                        self.assigned.endpoints)
                except NetworkSetupError as e:
                    self._report(tid, TaskState.REJECTED, "rejected", err=f"networks: {e}")
                    return
                req = req.model_copy(update={"netns": path, "address": _own_address(a.task)})
            self._report(tid, TaskState.STARTING, "starting")
            try:
                rec = await self.engine.run(req, files=self.assigned.files(a.task))
            except (EngineError, ImageError) as e:
                self._report(tid, TaskState.FAILED, "failed", err=str(e))
                return
            self._observe(tid, rec)
        finally:
            self._busy.pop(tid, None)
            self._kick.set()

    async def _stop(self, tid: str, rec: ContainerRecord) -> None:
        try:
            a = self.assigned.tasks.get(tid)
            if a is not None and a.task.networks and self.drain > 0 and rec.status == "running":
                await asyncio.sleep(self.drain)  # drain first, then stop (see DRAIN)
            await self.engine.stop(rec.id)
            self._observe(tid, rec)
        except (RuntimeError_, NotFound) as e:
            log.warning("stopping task %s: %s", tid, e)
        finally:
            self._busy.pop(tid, None)
            self._kick.set()

    async def _remove(self, tid: str, rec: ContainerRecord) -> None:
        try:
            await self.engine.remove(rec.id, force=True)
            if self.networks is not None:
                await self.networks.release(tid)
        except (RuntimeError_, NotFound) as e:
            log.warning("removing the container of task %s: %s", tid, e)
        finally:
            self._busy.pop(tid, None)
