"""Containers under conmon + an OCI runtime (runc by default).

Each container has a directory under the engine root holding its bundle
(config.json), its record (state.json, written atomically), conmon's pid
files, the k8s-format log and the exit file. conmon double-forks away from
the agent, so containers outlive an agent that is killed; `recover()` on
start re-adopts running containers and collects exit codes of those that
ended meanwhile from conmon's exit files.

All names are per-engine (root dir, runtime root, cgroup parent), so several
agents can share one machine in tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent import proc
from api.fsutil import write_atomic
from api.probe import NULL_PROBE, Probe

from .health import HealthConfig, HealthState
from .logs import LogFiles, LogLine
from .spec import ContainerSpec, Mount, build_config


class RuntimeError_(Exception):
    """An error from the OCI runtime or conmon, with their message."""


class NotFound(Exception):
    pass


@dataclass
class ContainerRecord:
    id: str
    name: str
    image: str
    spec: dict[str, Any]
    created: float
    status: str = "created"  # created | running | exited
    pid: int = 0
    started: float = 0.0
    finished: float = 0.0
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    health: dict[str, Any] | None = None  # HealthConfig
    health_state: dict[str, Any] | None = None  # HealthState


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ContainerManager:
    def __init__(
        self,
        root: str,
        *,
        runtime: str = "runc",
        runtime_root: str | None = None,
        cgroup_parent: str = "orch",
        conmon: str = "conmon",
        log_size_max: int = 10 << 20,
        log_max_files: int = 3,
        on_change: Callable[[ContainerRecord], None] | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.runtime = shutil.which(runtime) or runtime
        self.runtime_root = runtime_root or os.path.join(self.root, "runtime")
        self.cgroup_parent = cgroup_parent.strip("/")
        self.conmon = shutil.which(conmon) or conmon
        self.log_size_max = log_size_max
        self.log_max_files = log_max_files
        # Called when a container ends or its health status changes (the
        # agent's worker turns these into task status updates).
        self.on_change = on_change
        # Container create/start latencies for the daemon's metrics (set by the daemon).
        self.probe: Probe = NULL_PROBE
        self.records: dict[str, ContainerRecord] = {}
        self._health_tasks: dict[str, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        os.makedirs(os.path.join(self.root, "containers"), exist_ok=True)
        os.makedirs(self.runtime_root, exist_ok=True)

    # -- paths -------------------------------------------------------------

    def cdir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)

    def log_path(self, cid: str) -> str:
        return os.path.join(self.cdir(cid), "container.log")

    def log_files(self, cid: str) -> LogFiles:
        return LogFiles(self.cdir(cid), self.log_max_files)

    def _exit_file(self, cid: str) -> str:
        return os.path.join(self.cdir(cid), "exits", cid)

    def _save(self, rec: ContainerRecord) -> None:
        # No fsync for the record and the bundle: they are rewritten on every
        # change and what matters after a host crash is re-derived from the
        # runtime's state and conmon's exit files; an fsync per write would
        # stall the event loop for every container started.
        write_atomic(os.path.join(self.cdir(rec.id), "state.json"), json.dumps(asdict(rec)).encode(), fsync=False)

    def get(self, ref: str) -> ContainerRecord:
        rec = self.records.get(ref)
        if rec is not None:
            return rec
        for r in self.records.values():
            if r.name == ref:
                return r
        matches = [r for r in self.records.values() if r.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"no container with id or name {ref!r}")

    # -- runtime calls ---------------------------------------------------------

    async def _run(self, *args: str, check: bool = True, timeout: float = 30.0) -> tuple[int, str, str]:
        try:
            res = await proc.run(args, timeout=timeout)
        except proc.Timeout:
            raise RuntimeError_(f"{os.path.basename(args[0])} {args[1] if len(args) > 1 else ''}: timed out") from None
        rc, out, err = res.returncode, res.stdout, res.stderr
        if check and rc != 0:
            raise RuntimeError_(_runtime_message(err.decode(errors="replace")) or f"exit status {rc}")
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def _rt(self, *args: str) -> list[str]:
        return [self.runtime, f"--root={self.runtime_root}", *args]

    async def _state(self, cid: str) -> dict[str, Any] | None:
        rc, out, _ = await self._run(*self._rt("state", cid), check=False)
        if rc != 0:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return None

    # -- lifecycle ---------------------------------------------------------

    async def create(
        self, spec: ContainerSpec, rootfs: str, image_config: dict[str, Any], *, name: str | None = None,
        cid: str | None = None, healthcheck: HealthConfig | None = None,
    ) -> ContainerRecord:
        t0 = time.monotonic()
        cid = cid or uuid.uuid4().hex
        name = name or cid[:12]
        if any(r.name == name for r in self.records.values()):
            raise RuntimeError_(f"a container named {name!r} already exists")
        d = self.cdir(cid)
        os.makedirs(os.path.join(d, "exits"), exist_ok=True)
        os.makedirs(os.path.join(d, "sock"), exist_ok=True)
        hosts = os.path.join(d, "hosts")
        hostname = spec.hostname or cid[:12]
        with open(hosts, "w") as f:
            own = spec.address or "127.0.1.1"
            f.write(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n")
        resolv = os.path.join(d, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver 127.0.0.11\noptions ndots:0\n")
        cfg = build_config(
            spec, image_config, os.path.abspath(rootfs), container_id=cid,
            cgroups_path=f"/{self.cgroup_parent}/{cid}", hosts_file=hosts, resolv_file=resolv,
        )
        write_atomic(os.path.join(d, "config.json"), json.dumps(cfg).encode(), fsync=False)  # see _save
        rec = ContainerRecord(cid, name, spec.image, asdict(spec), time.time())
        if healthcheck is not None:
            rec.health = asdict(healthcheck)
            rec.health_state = asdict(HealthState())
        self.records[cid] = rec
        self._save(rec)
        args = [
            self.conmon, "--api-version", "1", "-c", cid, "-u", cid, "-n", name, "-b", d,
            "-p", os.path.join(d, "pid"), "-P", os.path.join(d, "conmon.pid"),
            "-l", f"k8s-file:{self.log_path(cid)}", "--log-size-max", str(self.log_size_max),
            "--exit-dir", os.path.join(d, "exits"), "-r", self.runtime,
            "--runtime-arg", f"--root={self.runtime_root}",
            "--runtime-arg", f"--log={os.path.join(d, 'runtime.log')}",
            "--runtime-arg", "--log-format=json",
            "--socket-dir-path", os.path.join(d, "sock"),
        ]
        try:
            pid, message = await self._conmon_create(args)
        except RuntimeError_ as e:
            rec.status, rec.error = "exited", str(e)
            rec.exit_code = 127
            self._save(rec)
            raise
        # conmon reports the pid once `runtime create` succeeded: no need to ask the runtime again.
        st: dict[str, Any] | None = {"pid": pid} if pid > 0 else None
        if st is None:
            if message:
                rec.status, rec.error, rec.exit_code = "exited", message, 127
                self._save(rec)
                raise RuntimeError_(message)
            # runc create failed: conmon wrote the runtime's message into the log or exit file.
            msg = self._failure_message(cid)
            rec.status, rec.error, rec.exit_code = "exited", msg, 127
            self._save(rec)
            raise RuntimeError_(msg)
        rec.pid = int(st.get("pid") or 0)
        self._save(rec)
        self.probe.container_created(time.monotonic() - t0)
        return rec

    async def _conmon_create(self, args: list[str], timeout: float = 30.0) -> tuple[int, str]:
        """Run conmon; it reports the container's pid (or the runtime's
        error) on the sync pipe once `runtime create` has finished."""

        def go() -> tuple[int, str]:
            import select
            import subprocess

            r, w = os.pipe()
            try:
                p = subprocess.Popen(args, pass_fds=(w,), env=dict(os.environ, _OCI_SYNCPIPE=str(w)),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except BaseException:
                os.close(r)
                raise
            finally:
                os.close(w)
            buf = b""
            deadline = time.monotonic() + timeout
            try:
                while True:
                    try:
                        msg = json.loads(buf)
                        break
                    except ValueError:
                        pass
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        p.kill()
                        raise RuntimeError_("conmon did not report the container's pid in time")
                    ready, _, _ = select.select([r], [], [], remaining)
                    if not ready:
                        continue
                    chunk = os.read(r, 4096)
                    if not chunk:
                        _, err = p.communicate()
                        raise RuntimeError_(
                            err.decode(errors="replace").strip() or "conmon exited without reporting a pid"
                        )
                    buf += chunk
            finally:
                os.close(r)
            p.communicate()  # conmon's parent exits once the container is created
            return int(msg.get("data", msg.get("pid", -1))), str(msg.get("message", "")).strip()

        return await proc.in_thread(go)

    def _failure_message(self, cid: str) -> str:
        try:
            with open(os.path.join(self.cdir(cid), "runtime.log"), errors="replace") as f:
                errors = [json.loads(x) for x in f if x.strip().startswith("{")]
            msgs = [e.get("msg", "") for e in errors if e.get("level") in ("error", "fatal")]
            if msgs:
                return msgs[-1]
        except (OSError, ValueError):
            pass
        for p in (self.log_path(cid), self._exit_file(cid)):
            try:
                with open(p, errors="replace") as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text:
                return _runtime_message(text)
        return "the OCI runtime failed to create the container"

    async def start(self, ref: str) -> ContainerRecord:
        rec = self.get(ref)
        t0 = time.monotonic()
        try:
            await self._run(*self._rt("start", rec.id))
        except RuntimeError_ as e:
            rec.status, rec.error = "exited", str(e)
            self._save(rec)
            raise
        rec.status = "running"
        rec.started = time.time()
        self.probe.container_started(time.monotonic() - t0)
        self._save(rec)
        self.log_files(rec.id).track()
        self._start_health(rec)
        return rec

    async def run(self, spec: ContainerSpec, rootfs: str, image_config: dict[str, Any], *,
                  name: str | None = None) -> ContainerRecord:
        rec = await self.create(spec, rootfs, image_config, name=name)
        return await self.start(rec.id)

    def _collect_exit(self, rec: ContainerRecord) -> bool:
        """Read conmon's exit file; True when the container has ended (also one
        that never started, or ended with no exit file: see recover)."""
        try:
            with open(self._exit_file(rec.id)) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return rec.status == "exited"
        if rec.status != "exited":
            rec.status = "exited"
            rec.exit_code = int(text) if text.lstrip("-").isdigit() else -1
            rec.finished = time.time()
            rec.oom_killed = self._oom_killed(rec.id)
            self._save(rec)
            self.log_files(rec.id).track()
            t = self._health_tasks.pop(rec.id, None)
            if t is not None:
                t.cancel()
            self._notify(rec)
        return True

    def _notify(self, rec: ContainerRecord) -> None:
        if self.on_change is not None:
            try:
                self.on_change(rec)
            except Exception:  # a listener's bug must not break supervision
                import logging

                logging.getLogger(__name__).exception("container change listener failed")

    def _oom_killed(self, cid: str) -> bool:
        for path in (
            f"/sys/fs/cgroup/memory/{self.cgroup_parent}/{cid}/memory.oom_control",
            f"/sys/fs/cgroup/{self.cgroup_parent}/{cid}/memory.events",
        ):
            try:
                with open(path) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == "oom_kill" and int(v) > 0:
                            return True
            except (OSError, ValueError):
                continue
        return False

    async def wait(self, ref: str, timeout: float | None = None) -> int:
        rec = self.get(ref)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._collect_exit(rec):
            if deadline is not None and time.monotonic() > deadline:
                raise asyncio.TimeoutError(f"container {rec.name} still running")
            await asyncio.sleep(0.05)
        assert rec.exit_code is not None
        return rec.exit_code

    async def kill(self, ref: str, sig: str | int = "KILL") -> None:
        rec = self.get(ref)
        await self._run(*self._rt("kill", rec.id, str(sig)), check=False)

    async def stop(self, ref: str, timeout: float | None = None) -> int | None:
        rec = self.get(ref)
        if self._collect_exit(rec):
            return rec.exit_code
        sig = (rec.spec.get("stop_signal") or "TERM").upper().removeprefix("SIG")
        grace = rec.spec.get("stop_grace", 10.0) if timeout is None else timeout
        await self._run(*self._rt("kill", rec.id, sig), check=False)
        try:
            return await self.wait(rec.id, timeout=grace)
        except asyncio.TimeoutError:
            await self._run(*self._rt("kill", "--all", rec.id, "KILL"), check=False)
            return await self.wait(rec.id, timeout=10)

    async def remove(
        self, ref: str, force: bool = False, before_cleanup: Callable[[str], None] | None = None
    ) -> None:
        """Delete a container; `before_cleanup(container_dir)` runs after the
        runtime let go of it and before its directory goes (unmount here)."""
        rec = self.get(ref)
        if not self._collect_exit(rec):
            if not force:
                raise RuntimeError_(f"container {rec.name} is running; stop it first or force")
            await self._run(*self._rt("kill", "--all", rec.id, "KILL"), check=False)
            try:
                await self.wait(rec.id, timeout=10)
            except asyncio.TimeoutError:
                pass
        await self._run(*self._rt("delete", "--force", rec.id), check=False)
        cp = self._read_pid(os.path.join(self.cdir(rec.id), "conmon.pid"))
        if cp and _pid_alive(cp):
            try:
                os.kill(cp, signal.SIGKILL)
            except ProcessLookupError:
                pass
        t = self._health_tasks.pop(rec.id, None)
        if t is not None:
            t.cancel()
        d = self.cdir(rec.id)

        def cleanup() -> None:
            # Unmounting and deleting trees is blocking filesystem work: off the
            # event loop, so removing 100 containers does not stall the API.
            if before_cleanup is not None:
                before_cleanup(d)
            shutil.rmtree(d, ignore_errors=True)

        await proc.in_thread(cleanup)
        self.records.pop(rec.id, None)

    async def exec(self, ref: str, cmd: list[str], *, user: str | None = None,
                   env: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
        rec = self.get(ref)
        if self._collect_exit(rec):
            raise RuntimeError_(f"container {rec.name} is not running")
        pid_file = os.path.join(self.cdir(rec.id), f"exec-{uuid.uuid4().hex[:12]}.pid")
        args = self._rt("exec", "--pid-file", pid_file)
        if user:
            args += ["--user", user]
        for k, v in (env or {}).items():
            args += ["--env", f"{k}={v}"]
        args += [rec.id, *cmd]
        def kill_inner() -> None:
            # Killing `runc exec` alone would orphan the process inside the
            # container: kill that process first.
            pid = self._read_pid(pid_file)
            if pid and _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        try:
            res = await proc.run(args, timeout=timeout, merge_stderr=True, on_timeout=kill_inner)
        except proc.Timeout:
            raise asyncio.TimeoutError(f"exec in {rec.name} timed out after {timeout:g} s") from None
        finally:
            try:
                os.unlink(pid_file)
            except FileNotFoundError:
                pass
        return res.returncode, res.stdout

    # -- health and supervision --------------------------------------------

    def _start_health(self, rec: ContainerRecord) -> None:
        if rec.health is None or rec.id in self._health_tasks or rec.status != "running":
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._health_tasks[rec.id] = asyncio.create_task(self._health_loop(rec))

    async def _health_loop(self, rec: ContainerRecord) -> None:
        assert rec.health is not None
        cfg = HealthConfig(**rec.health)
        state = HealthState(**rec.health_state) if rec.health_state else HealthState()
        while True:
            await asyncio.sleep(cfg.interval)
            if self._collect_exit(rec):
                return
            begun = time.time()
            try:
                code, out = await self.exec(rec.id, cfg.command(), timeout=cfg.timeout)
                output = out.decode(errors="replace")
            except asyncio.TimeoutError:
                code, output = -1, f"health check exceeded its timeout ({cfg.timeout:g} s)"
            except RuntimeError_ as e:
                if self._collect_exit(rec):
                    return
                code, output = -1, str(e)
            changed = state.record(cfg, rec.started, begun, time.time(), code, output)
            rec.health_state = asdict(state)
            if rec.id not in self.records:
                return
            self._save(rec)
            if changed:
                self._notify(rec)

    def start_supervisor(self, period: float = 0.5) -> None:
        """Collect exits, keep log rotation links and health monitors going."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(period))

    async def _supervise(self, period: float) -> None:
        while True:
            for rec in list(self.records.values()):
                if rec.status == "exited":
                    continue
                try:
                    self.log_files(rec.id).track()
                    self._collect_exit(rec)
                except OSError:
                    pass  # removed meanwhile
            await asyncio.sleep(period)

    async def close(self) -> None:
        tasks = [t for t in (self._supervisor, *self._health_tasks.values()) if t is not None]
        self._supervisor = None
        self._health_tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _read_pid(path: str) -> int:
        try:
            with open(path) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def list(self) -> list[ContainerRecord]:
        for r in self.records.values():
            self._collect_exit(r)
        return sorted(self.records.values(), key=lambda r: r.created)

    async def recover(self) -> list[ContainerRecord]:
        """Re-adopt containers recorded on disk after an agent restart."""
        base = os.path.join(self.root, "containers")
        for cid in sorted(os.listdir(base)):
            p = os.path.join(base, cid, "state.json")
            try:
                with open(p) as f:
                    d = json.load(f)
                rec = ContainerRecord(**d)
            except (OSError, ValueError, TypeError):
                continue
            self.records[rec.id] = rec
            if self._collect_exit(rec):
                continue
            st = await self._state(rec.id)
            if st is not None and st.get("status") == "running":
                rec.status = "running"
                rec.pid = int(st.get("pid") or 0)
                self._start_health(rec)
            elif st is not None and st.get("status") == "created":
                rec.status = "created"
            elif not self._conmon_alive(rec.id):
                # No exit file, no process and no conmon to write one: it ended unwatched,
                # with its conmon (the host restarted). Exited 255, as Docker's after a reboot.
                rec.status, rec.exit_code, rec.finished = "exited", 255, time.time()
                rec.error = rec.error or "ended with no exit status while the engine was down (host restarted?)"
                rec.oom_killed = self._oom_killed(rec.id)
                self.log_files(rec.id).track()
                self._notify(rec)
            self._save(rec)
        return self.list()

    def _conmon_alive(self, cid: str) -> bool:
        """The container's conmon still runs (its pid file's process is a conmon: after a
        reboot the pid may be another process's)."""
        pid = self._read_pid(os.path.join(self.cdir(cid), "conmon.pid"))
        try:
            with open(f"/proc/{pid}/comm") as f:
                return pid > 0 and f.read().strip() == os.path.basename(self.conmon)[:15]
        except OSError:
            return False

    # -- logs --------------------------------------------------------------

    async def logs(self, ref: str, *, follow: bool = False, tail: int | None = None
                   ) -> AsyncIterator[tuple[str, str, str]]:
        """(timestamp, stream, line) from the rotated k8s-format log files."""
        rec = self.get(ref)
        files = self.log_files(rec.id)
        files.track()
        item: LogLine
        async for item in files.read(follow=follow, tail=tail, ended=lambda: self._collect_exit(rec)):
            yield item.ts, item.stream, item.line


def _runtime_message(text: str) -> str:
    """Pull the human part out of runc's logfmt error lines."""
    for line in reversed(text.strip().splitlines()):
        if 'msg="' in line:
            start = line.index('msg="') + 5
            end = line.rfind('"')
            return line[start:end].replace('\\"', '"') if end > start else line
        if line.strip():
            return line.strip()
    return text.strip()


__all__ = ["ContainerManager", "ContainerRecord", "ContainerSpec", "Mount", "NotFound", "RuntimeError_"]
