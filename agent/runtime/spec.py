"""Building an OCI runtime config.json: user/task settings over the image's
config over the engine's defaults (Docker's default profile).

Pure functions: no I/O except reading the rootfs's /etc/passwd and
/etc/group to resolve the user, which `resolve_user` does through a root
directory it is given.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from api.privileges import CAPABILITIES, UNLIMITED, PrivilegeError
from api.privileges import capability as _capability

from .seccomp import SeccompError, default_profile, load_profile

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]

INIT_TARGET = "/sbin/orch-init"
"""Where the init binary (tini) is bind-mounted in a container run with init."""

RLIM_INFINITY = 2**64 - 1

# Host /dev entries a privileged container does not get as nodes: its own
# /dev/pts, /dev/shm and /dev/mqueue are mounted over them.
_PRIVILEGED_DEV_SKIP = ("/dev/pts", "/dev/shm", "/dev/mqueue")

READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# Device cgroup allow-list (after "deny all"), as Docker's default.
DEVICE_RULES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts/*
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # tun
    {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"},  # fuse
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
]


class SpecError(ValueError):
    pass


@dataclass
class Mount:
    type: str  # bind | tmpfs | volume (a bind of an engine-managed dir)
    target: str
    source: str = ""
    readonly: bool = False
    options: list[str] = field(default_factory=list)


@dataclass
class ContainerSpec:
    image: str = ""
    command: list[str] | None = None  # replaces the image's Entrypoint
    args: list[str] | None = None  # replaces the image's Cmd
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    hostname: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    memory: int = 0  # bytes; 0 = unlimited
    memory_swap: int = 0
    cpu_quota: int = 0  # microseconds per cpu_period
    cpu_period: int = 100_000
    cpu_shares: int = 0
    pids_limit: int = 0
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    read_only: bool = False
    stop_signal: str | None = None
    stop_grace: float = 10.0
    labels: dict[str, str] = field(default_factory=dict)
    netns: str | None = None  # path of a network namespace to join; None = a new one
    address: str | None = None  # the container's IP on its network: /etc/hosts names the hostname by it
    seccomp: str | None = None  # None = the default profile, "unconfined" = none, else a Docker-format JSON file
    devices: list[str] = field(default_factory=list)  # HOST[:CONTAINER[:PERMS]], as docker run --device
    sysctls: dict[str, str] = field(default_factory=dict)
    ulimits: list[tuple[str, int, int]] = field(default_factory=list)  # (name, soft, hard); -1 = unlimited
    init: str | None = None  # host path of an init binary (tini) to run as PID 1; None = none


def known_capabilities() -> list[str]:
    """Every capability a container can be given here: those in this
    process's bounding set (the kernel's, less what a sandbox around the
    daemon took away; a runtime fails to grant any other)."""
    try:
        with open("/proc/self/status") as f:
            bnd = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    except (OSError, ValueError, StopIteration, IndexError):
        bnd = (1 << len(CAPABILITIES)) - 1
    return [c for i, c in enumerate(CAPABILITIES) if bnd >> i & 1]


def _caps(names: list[str], where: str) -> set[str]:
    out = set()
    for i, n in enumerate(names):
        try:
            out.add(_capability(n))
        except PrivilegeError as e:
            raise SpecError(f"{where}[{i}]: {e}") from None
    return out


def capabilities(spec: ContainerSpec) -> list[str]:
    """Docker's rules: the default set, plus cap_add, minus cap_drop; ALL in
    cap_drop starts from nothing, ALL in cap_add (or privileged) from every
    capability the kernel has."""
    known = known_capabilities()
    add, drop = _caps(spec.cap_add, "cap_add"), _caps(spec.cap_drop, "cap_drop")
    if spec.privileged:
        return sorted(known)
    caps = set() if "ALL" in drop else set(DEFAULT_CAPS)
    caps |= set(known) if "ALL" in add else add
    caps -= drop
    return sorted(caps & set(known))


def _rlimits(spec: ContainerSpec) -> list[dict[str, Any]]:
    def val(v: int) -> int:
        return RLIM_INFINITY if v == UNLIMITED else v

    return [{"type": f"RLIMIT_{name.upper()}", "soft": val(soft), "hard": val(hard)}
            for name, soft, hard in spec.ulimits]


def host_devices(root: str = "/dev") -> list[str]:
    """The host's device nodes (a privileged container gets them all)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) not in _PRIVILEGED_DEV_SKIP)
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(p)
    return out


def _read_db(rootfs: str, name: str) -> list[list[str]]:
    path = os.path.join(rootfs, "etc", name)
    # Never follow a symlink out of the container's root.
    if os.path.islink(path) or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]


def resolve_user(rootfs: str, user: str | None) -> tuple[int, int, list[int], str]:
    """USER as Docker reads it: name, uid, name:group, uid:gid. Returns
    (uid, gid, additional gids, home)."""
    if not user:
        user = "0"
    name, _, group = user.partition(":")
    passwd = _read_db(rootfs, "passwd")
    groups = _read_db(rootfs, "group")
    entry = None
    for p in passwd:
        if len(p) >= 6 and (p[0] == name or (name.isdigit() and p[2] == name)):
            entry = p
            break
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5] or "/"
        uname = entry[0]
    elif name.isdigit():
        uid, gid, home, uname = int(name), 0, "/", ""
    else:
        raise SpecError(f"user {name!r} not found in the image's /etc/passwd")
    if group:
        for g in groups:
            if len(g) >= 3 and (g[0] == group or (group.isdigit() and g[2] == group)):
                gid = int(g[2])
                break
        else:
            if not group.isdigit():
                raise SpecError(f"group {group!r} not found in the image's /etc/group")
            gid = int(group)
    extra = sorted(
        {int(g[2]) for g in groups if len(g) >= 4 and uname and uname in g[3].split(",") and int(g[2]) != gid}
    )
    return uid, gid, extra, home


def merge_env(image_env: list[str], user_env: dict[str, str], home: str) -> list[str]:
    env: dict[str, str] = {}
    for kv in image_env:
        k, _, v = kv.partition("=")
        env[k] = v
    env.update(user_env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", home)
    return [f"{k}={v}" for k, v in env.items()]


def process_args(spec: ContainerSpec, image: dict[str, Any]) -> list[str]:
    entry = spec.command if spec.command is not None else (image.get("Entrypoint") or [])
    if spec.args is not None:
        cmd = spec.args
    elif spec.command is not None:
        cmd = []  # a new entrypoint drops the image's Cmd, as Docker does
    else:
        cmd = image.get("Cmd") or []
    args = list(entry) + list(cmd)
    if not args:
        raise SpecError("no command: the image has no Entrypoint or Cmd and none was given")
    return args


def _device(text: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An explicit device opt-in: the node in the container and its cgroup rule."""
    parts = text.split(":")
    host = parts[0]
    target = parts[1] if len(parts) > 1 and parts[1] else host
    perms = parts[2] if len(parts) > 2 else "rwm"
    if len(parts) > 3 or not host.startswith("/") or not target.startswith("/"):
        raise SpecError(f"{where}: expected HOST[:CONTAINER[:PERMS]] with absolute paths (got {text!r})")
    if not perms or set(perms) - set("rwm"):
        raise SpecError(f"{where}: permissions are letters of rwm (got {perms!r})")
    try:
        st = os.stat(host)
    except OSError as e:
        raise SpecError(f"{where}: {host}: {e.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise SpecError(f"{where}: {host} is not a device node")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    dev = {"path": target, "type": kind, "major": major, "minor": minor,
           "fileMode": stat.S_IMODE(st.st_mode), "uid": 0, "gid": 0}
    return dev, {"allow": True, "type": kind, "major": major, "minor": minor, "access": perms}


def build_config(
    spec: ContainerSpec,
    image: dict[str, Any],
    rootfs: str,
    *,
    container_id: str,
    cgroups_path: str,
    hosts_file: str | None = None,
    resolv_file: str | None = None,
) -> dict[str, Any]:
    uid, gid, extra, home = resolve_user(rootfs, spec.user if spec.user is not None else image.get("User"))
    caps = capabilities(spec)
    hostname = spec.hostname or container_id[:12]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        # Privileged: /sys and the cgroup tree writable, as Docker.
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *([] if spec.privileged else ["ro"])]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [*([] if spec.privileged else ["ro"]), "nosuid", "noexec", "nodev", "relatime"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    if hosts_file:
        mounts.append({"destination": "/etc/hosts", "type": "bind", "source": hosts_file, "options": ["rbind", "ro"]})
    if resolv_file:
        mounts.append({"destination": "/etc/resolv.conf", "type": "bind", "source": resolv_file, "options": ["rbind", "ro"]})
    for i, m in enumerate(spec.mounts):
        if not m.target.startswith("/"):
            raise SpecError(f"mounts[{i}].target: must be an absolute path (got {m.target!r})")
        if m.type in ("bind", "volume"):
            if not m.source or not os.path.isabs(m.source):
                raise SpecError(f"mounts[{i}].source: must be an absolute host path (got {m.source!r})")
            opts = ["rbind", "ro" if m.readonly else "rw", *m.options]
            mounts.append({"destination": m.target, "type": "bind", "source": m.source, "options": opts})
        elif m.type == "tmpfs":
            opts = ["nosuid", "nodev", *(["ro"] if m.readonly else []), *m.options]
            mounts.append({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": opts})
        else:
            raise SpecError(f"mounts[{i}].type: {m.type!r} is not bind, volume or tmpfs")
    if spec.init:
        mounts.append({"destination": INIT_TARGET, "type": "bind", "source": spec.init, "options": ["rbind", "ro"]})
    resources: dict[str, Any] = {
        "devices": [{"allow": True, "access": "rwm"}] if spec.privileged else list(DEVICE_RULES)}
    linux_devices = []
    for i, d in enumerate(spec.devices):
        dev, rule = _device(d, f"devices[{i}]")
        linux_devices.append(dev)
        if not spec.privileged:
            resources["devices"].append(rule)
    if spec.privileged:
        taken = {d["path"] for d in linux_devices}
        for p in host_devices():
            if p not in taken:
                try:
                    linux_devices.append(_device(p, "privileged")[0])
                except SpecError:
                    continue  # gone since the walk
    if spec.memory:
        resources["memory"] = {"limit": spec.memory}
        if spec.memory_swap:
            resources["memory"]["swap"] = spec.memory_swap
    cpu: dict[str, Any] = {}
    if spec.cpu_quota:
        cpu["quota"] = spec.cpu_quota
        cpu["period"] = spec.cpu_period
    if spec.cpu_shares:
        cpu["shares"] = spec.cpu_shares
    if cpu:
        resources["cpu"] = cpu
    if spec.pids_limit:
        resources["pids"] = {"limit": spec.pids_limit}
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    namespaces.append({"type": "network", **({"path": spec.netns} if spec.netns else {})})
    linux: dict[str, Any] = {
        "devices": linux_devices,
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": cgroups_path,
    }
    if spec.netns:
        # A network of its own (overlay interfaces): unprivileged users may
        # ping, as Docker allows in every container network namespace.
        linux["sysctl"] = {"net.ipv4.ping_group_range": "0 2147483647"}
    if spec.sysctls:
        linux["sysctl"] = {**linux.get("sysctl", {}), **spec.sysctls}
    if not spec.privileged:
        linux["maskedPaths"] = MASKED_PATHS
        linux["readonlyPaths"] = READONLY_PATHS
    # Privileged containers run without seccomp, as in Docker.
    if not spec.privileged and spec.seccomp != "unconfined":
        try:
            linux["seccomp"] = default_profile(caps) if spec.seccomp is None else load_profile(spec.seccomp, caps)
        except SeccompError as e:
            raise SpecError(f"seccomp: {e}") from None
    env = merge_env(image.get("Env") or [], spec.env, home)
    cwd = spec.workdir or image.get("WorkingDir") or "/"
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})},
            "args": ([INIT_TARGET, "--"] if spec.init else []) + process_args(spec, image),
            "env": env,
            "cwd": cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": not spec.privileged,
            **({"rlimits": _rlimits(spec)} if spec.ulimits else {}),
            # Containers do not inherit the daemon's oom_score_adj (its systemd
            # unit lowers it so the daemon is not killed before its containers).
            "oomScoreAdj": 0,
        },
        "root": {"path": rootfs, "readonly": spec.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": {f"org.orch.label.{k}": v for k, v in spec.labels.items()},
        "linux": linux,
    }
