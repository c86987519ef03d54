"""The engine's one way to run a container: image -> rootfs -> runtime.

Used by the node-local API (`orch container run`) and by the agent's worker
for tasks, so both get the same behaviour: the image is pulled when
missing, mounts are resolved (volumes created and seeded from the image on
first use), the healthcheck comes from the request or the image, and a
container that fails to start leaves nothing behind (runtime state, rootfs
mount, directory).

`Engine` also implements the worker's view of an engine
(`agent.worker.TaskEngine`): list, stop, remove, logs and change
notifications of containers, besides `run`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypedDict

from pydantic import Field

from agent.images import ImageService
from agent.runtime.execproc import ExecProcess
from agent.runtime.health import HealthConfigError
from agent.runtime.health import resolve as resolve_health
from agent.runtime.runtime import ContainerManager, ContainerRecord, NotFound, RuntimeError_
from agent.runtime.spec import ContainerSpec, Mount, SpecError
from agent.runtime.volumes import Volume, VolumeError, VolumeStore
from api.objects import HealthcheckSpec, Model, MountSpec, MountType
from api.privileges import PrivilegeError, check_sysctl, parse_device, parse_ulimit
from api.session import ExecStart


class EngineError(Exception):
    def __init__(self, message: str, status: int = 500, code: str = "runtime") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RunRequest(Model):
    """POST /v1/containers: what `orch container run` sends."""

    image: str = Field(min_length=1)
    name: str | None = None
    command: tuple[str, ...] | None = None  # replaces the image's Entrypoint
    args: tuple[str, ...] | None = None  # replaces the image's Cmd
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    hostname: str | None = None
    memory: int = Field(0, ge=0)
    pids_limit: int = Field(0, ge=0)
    cpus: float = Field(0.0, ge=0)
    stop_signal: str | None = None
    stop_grace: float = Field(10.0, ge=0)
    mounts: tuple[MountSpec, ...] = ()
    healthcheck: HealthcheckSpec | None = None
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    read_only: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    seccomp: str | None = None  # None: the default profile; "unconfined"; or a Docker-format profile file
    devices: tuple[str, ...] = ()  # HOST[:CONTAINER[:PERMS]]
    sysctls: dict[str, str] = Field(default_factory=dict)  # namespaced ones only
    ulimits: tuple[str, ...] = ()  # NAME=SOFT[:HARD], -1 or unlimited for none
    init: bool = False  # tini as PID 1 (reaps zombies, forwards signals)
    networks: tuple[str, ...] = ()  # attachable overlay networks (names or ids) for a plain container
    netns: str | None = None  # network namespace to join (a task's, with its overlay interfaces); None: a new one
    address: str | None = None  # the container's own IP, for its /etc/hosts entry


INIT_BINARIES = ("/usr/bin/tini-static", "/usr/bin/tini")
"""Where the init for `init: true` is looked for on a node, static first
(a dynamically linked tini needs a C library in the image)."""


def init_binary() -> str:
    for p in INIT_BINARIES:
        if os.access(p, os.X_OK):
            return p
    raise SpecError("init: no init binary on this node (install Debian's tini: " + " or ".join(INIT_BINARIES) + ")")


def _privileges(req: RunRequest) -> dict[str, Any]:
    """The request's devices, sysctls and ulimits, checked as the managers
    check a service's (a plain `container run` reaches no manager)."""
    try:
        devices = []
        for i, d in enumerate(req.devices):
            try:
                dev = parse_device(d)
                devices.append(f"{dev.host}:{dev.container}:{dev.permissions}")
            except PrivilegeError as e:
                raise PrivilegeError(f"devices[{i}]: {e}") from None
        for k in req.sysctls:
            try:
                check_sysctl(k)
            except PrivilegeError as e:
                raise PrivilegeError(f"sysctls.{k}: {e}") from None
        ulimits = []
        for i, u in enumerate(req.ulimits):
            try:
                ulimits.append(parse_ulimit(u))
            except PrivilegeError as e:
                raise PrivilegeError(f"ulimits[{i}]: {e}") from None
    except PrivilegeError as e:
        raise SpecError(str(e)) from None
    return {"devices": devices, "sysctls": dict(req.sysctls), "ulimits": ulimits, "init": init_binary() if req.init else None}


class TaskFile(TypedDict):
    """A secret or config file of a task's container: `data` is written to
    a private file (secrets on a tmpfs) bind-mounted read-only at `target`."""

    kind: str  # "secret" | "config"
    target: str  # absolute path in the container
    data: bytes
    uid: str
    gid: str
    mode: int


def volume_users(mgr: ContainerManager, vol: Volume) -> list[str]:
    return [r.name for r in mgr.list()
            if any(m.get("source") == vol.path for m in r.spec.get("mounts", []))]


class Engine:
    def __init__(self, images: ImageService, containers: ContainerManager, volumes: VolumeStore) -> None:
        self.images = images
        self.containers = containers
        self.volumes = volumes

    def _mounts(self, req: RunRequest, rootfs: str) -> list[Mount]:
        out: list[Mount] = []
        for i, m in enumerate(req.mounts):
            where = f"mounts[{i}]"
            if m.type == MountType.BIND:
                if not os.path.isabs(m.source):
                    raise SpecError(f"{where}.source: a bind mount needs an absolute host path (got {m.source!r})")
                if not os.path.exists(m.source):
                    raise SpecError(f"{where}.source: {m.source} does not exist on this host")
                out.append(Mount("bind", m.target, m.source, m.readonly))
            elif m.type == MountType.VOLUME:
                name = m.source or f"anon-{uuid.uuid4().hex}"
                try:
                    VolumeStore.check_name(name, f"{where}.source")
                    vol, fresh = self.volumes.create(name, {"orch.anonymous": "true"} if not m.source else None)
                except VolumeError as e:
                    raise SpecError(str(e)) from None
                if fresh:
                    self.volumes.seed_from_image(vol, rootfs, m.target)
                out.append(Mount("volume", m.target, vol.path, m.readonly))
            else:
                opts = [f"mode={m.tmpfs_mode:o}"] + ([f"size={m.tmpfs_size}"] if m.tmpfs_size else [])
                out.append(Mount("tmpfs", m.target, "", m.readonly, opts))
        return out

    async def ensure_image(self, ref: str) -> dict[str, Any]:
        """The image's config, pulling the image first if this node lacks it."""
        if not self.images.has(ref):
            await self.images.pull(ref)
        return self.images.image_config(ref)

    def _cleanup(self, cdir: str) -> None:
        """Before a container directory goes: its secrets tmpfs, then its rootfs."""
        secrets_dir = os.path.join(cdir, "secrets")
        if os.path.ismount(secrets_dir):
            subprocess.run(["umount", "-l", secrets_dir], check=False, capture_output=True)
        self.images.release_rootfs(cdir)

    def _files(self, cdir: str, files: list[TaskFile]) -> list[Mount]:
        """Secrets on a private tmpfs (never on disk), configs as plain files;
        each bind-mounted read-only at its target."""
        mounts = []
        if any(f["kind"] == "secret" for f in files):
            d = os.path.join(cdir, "secrets")
            os.makedirs(d, mode=0o700, exist_ok=True)
            if not os.path.ismount(d):
                size = sum(len(f["data"]) + 4096 for f in files if f["kind"] == "secret") + 65536
                r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,nodev,nosuid,noexec",
                                    "tmpfs", d], capture_output=True, text=True)
                if r.returncode != 0:
                    raise SpecError(f"cannot mount the secrets tmpfs: {r.stderr.strip()}")
        os.makedirs(os.path.join(cdir, "configs"), mode=0o700, exist_ok=True)
        for i, f in enumerate(files):
            target = str(f["target"])
            if not target.startswith("/"):
                raise SpecError(f"files[{i}].target: must be an absolute path (got {target!r})")
            base = "secrets" if f["kind"] == "secret" else "configs"
            path = os.path.join(cdir, base, f"{i}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(bytes(f["data"]))
            try:
                os.chown(path, int(f.get("uid") or 0), int(f.get("gid") or 0))
            except ValueError:
                raise SpecError(f"files[{i}]: uid and gid must be numbers") from None
            os.chmod(path, int(f.get("mode", 0o444)))
            mounts.append(Mount("bind", target, path, True))
        return mounts

    async def run(self, req: RunRequest, *, cid: str | None = None,
                  files: list[TaskFile] | None = None) -> ContainerRecord:
        """Create and start a container; raises ImageError or EngineError.
        `files`: secrets and configs to mount."""
        mgr = self.containers
        image_config = await self.ensure_image(req.image)
        try:
            health = resolve_health(
                req.healthcheck.model_dump(mode="json") if req.healthcheck is not None else None, image_config
            )
        except HealthConfigError as e:
            raise EngineError(str(e), 400, "invalid_argument") from None
        if req.name is not None and any(r.name == req.name for r in mgr.records.values()):
            raise EngineError(f"a container named {req.name!r} already exists", 409, "conflict")
        cid = cid or uuid.uuid4().hex
        cdir = mgr.cdir(cid)
        rootfs = await self.images.prepare_rootfs(req.image, cdir)
        try:
            spec = ContainerSpec(
                image=req.image,
                command=list(req.command) if req.command is not None else None,
                args=list(req.args) if req.args is not None else None,
                env=dict(req.env), user=req.user, workdir=req.workdir, hostname=req.hostname,
                memory=req.memory, pids_limit=req.pids_limit, cpu_quota=int(req.cpus * 100_000),
                stop_signal=req.stop_signal, stop_grace=req.stop_grace,
                mounts=self._mounts(req, str(rootfs)) + self._files(cdir, files or []), privileged=req.privileged,
                cap_add=list(req.cap_add), cap_drop=list(req.cap_drop), read_only=req.read_only,
                labels=dict(req.labels), seccomp=req.seccomp,
                netns=req.netns, address=req.address, **_privileges(req),
            )
            await mgr.create(spec, str(rootfs), image_config, name=req.name, cid=cid, healthcheck=health)
            return await mgr.start(cid)
        except (RuntimeError_, SpecError) as e:
            try:
                await mgr.remove(cid, force=True, before_cleanup=self._cleanup)
            except NotFound:
                self._cleanup(cdir)
                shutil.rmtree(cdir, ignore_errors=True)
            if isinstance(e, SpecError):
                raise EngineError(str(e), 400, "invalid_argument") from None
            raise EngineError(str(e), 500, "runtime") from None

    async def remove(self, cid: str, force: bool = False) -> None:
        """Delete a container, its rootfs mount and its anonymous volumes."""
        rec = self.containers.get(cid)
        await self.containers.remove(rec.id, force=force, before_cleanup=self._cleanup)
        for m in rec.spec.get("mounts", []):
            if m.get("type") != "volume":
                continue
            for vol in self.volumes.list():
                if vol.path == m.get("source") and vol.labels.get("orch.anonymous") == "true":
                    if not volume_users(self.containers, vol):
                        self.volumes.remove(vol.name, [])

    # -- what the worker uses besides run/remove (agent.worker.TaskEngine) ----------

    def list_containers(self) -> list[ContainerRecord]:
        return self.containers.list()

    def subscribe(self, callback: Callable[[ContainerRecord], None]) -> None:
        """`callback(record)` on every container change (one subscriber)."""
        self.containers.on_change = callback

    async def stop(self, cid: str) -> int | None:
        """Stop signal, then KILL after the container's grace period; its exit code."""
        return await self.containers.stop(cid)

    def logs(self, cid: str, *, follow: bool = False, tail: int | None = None
             ) -> AsyncIterator[tuple[str, str, str]]:
        """(timestamp, stream, line) of a container's log."""
        return self.containers.logs(cid, follow=follow, tail=tail)

    def exec_process(self, cid: str, start: ExecStart) -> ExecProcess:
        """A process to run in container `cid` as `start` says (not started yet)."""
        return ExecProcess(self.containers, cid, start.argv, tty=start.tty, stdin=start.stdin, user=start.user,
                           env=start.env, workdir=start.workdir, width=start.width, height=start.height)
