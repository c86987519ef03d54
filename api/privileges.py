"""What a container may do beyond Docker's defaults, as values: capability
names, device mappings, sysctls, ulimits.

Sans-I/O: parsing and the rules are plain functions over strings, used by the
service model's validators (so the managers reject a bad spec, whatever sent
it), by the CLI's flag parsers and by the compose conversion. Each raises
`PrivilegeError` with a message that says what was wrong; callers add where
(the flag, the field path). The engine turns the values into an OCI runtime
spec (`agent/runtime/spec.py`).
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

# Linux capabilities by number (capability.h), up to CAP_CHECKPOINT_RESTORE
# (Linux 5.9). A node's kernel may know fewer: the engine keeps to
# /proc/sys/kernel/cap_last_cap.
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# Kernel resource limits a container may set (setrlimit(2) names, lower case
# as `docker run --ulimit` takes them).
ULIMITS: tuple[str, ...] = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
    "rtprio", "rttime", "sigpending", "stack",
)

UNLIMITED = -1
"""A ulimit value without a limit (RLIM_INFINITY)."""

# Sysctls that are per container because their namespace is the container's
# own (as Docker allows them): IPC namespace ones, the UTS domain name, and
# every net.* (the network namespace) unless the task shares the host's.
_IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                          "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
_SYSCTL_NAME = re.compile(r"^[a-z0-9_]+(\.[a-zA-Z0-9_\-]+)+$")
_PERMS = re.compile(r"^(?!.*(.).*\1)[rwm]{1,3}$")


class PrivilegeError(ValueError):
    pass


def capability(name: str) -> str:
    """A capability as the kernel names it: CAP_NET_ADMIN for net_admin,
    NET_ADMIN or CAP_NET_ADMIN; "ALL" stays ALL (every capability)."""
    n = name.strip().upper()
    if n == "ALL":
        return n
    full = n if n.startswith("CAP_") else "CAP_" + n
    if full not in CAPABILITIES:
        close = difflib.get_close_matches(full.removeprefix("CAP_"), [c.removeprefix("CAP_") for c in CAPABILITIES], n=1)
        hint = f"did you mean {close[0]}?" if close else "a Linux capability such as NET_ADMIN, or ALL"
        raise PrivilegeError(f"unknown capability {name!r} ({hint})")
    return full


def check_capabilities(names: tuple[str, ...] | list[str]) -> None:
    for i, n in enumerate(names):
        try:
            capability(n)
        except PrivilegeError as e:
            raise PrivilegeError(f"item {i}: {e}") from None


class Device(NamedTuple):
    host: str
    container: str  # where it appears in the container (the host path if not given)
    permissions: str  # letters of rwm: read, write, mknod


def check_device(host: str, container: str = "", permissions: str = "rwm") -> Device:
    if not host.startswith("/"):
        raise PrivilegeError(f"device path on the host must be absolute (got {host!r})")
    if container and not container.startswith("/"):
        raise PrivilegeError(f"device path in the container must be absolute (got {container!r})")
    if ".." in host.split("/") or ".." in container.split("/"):
        raise PrivilegeError(f"device paths may not contain '..' (got {host!r}, {container!r})")
    if not _PERMS.match(permissions):
        raise PrivilegeError(f"device permissions are distinct letters of rwm (got {permissions!r})")
    return Device(host, container or host, permissions)


def parse_device(text: str) -> Device:
    """HOST[:CONTAINER[:PERMS]], as `docker run --device`; HOST:PERMS too."""
    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise PrivilegeError(f"expected HOST[:CONTAINER[:PERMS]] (got {text!r})")
    if len(parts) == 2 and _PERMS.match(parts[1]):
        return check_device(parts[0], "", parts[1])
    return check_device(parts[0], parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else "rwm")


def check_sysctl(name: str, *, host_network: bool = False) -> None:
    """Only sysctls of the container's own namespaces: any other would
    change the node for every container and the daemon."""
    if not _SYSCTL_NAME.match(name):
        raise PrivilegeError(f"{name!r} is not a sysctl name such as net.ipv4.ip_forward")
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue.") or name == "kernel.domainname":
        return
    if name.startswith("net."):
        if host_network:
            raise PrivilegeError(f"sysctl {name} is not allowed: the task shares the host's network namespace")
        return
    raise PrivilegeError(f"sysctl {name} is not allowed: only namespaced ones are (net.*, fs.mqueue.*, "
                         "kernel.msg*/sem/shm* of the IPC namespace, kernel.domainname)")


def parse_sysctl(text: str) -> tuple[str, str]:
    """NAME=VALUE."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise PrivilegeError(f"expected NAME=VALUE (got {text!r})")
    check_sysctl(name)
    return name, value


def _limit(v: str, what: str, text: str) -> int:
    v = v.strip()
    if v in ("unlimited", "-1"):
        return UNLIMITED
    if not v.isdigit():
        raise PrivilegeError(f"{what} limit {v!r} is not a number or 'unlimited' (in {text!r})")
    return int(v)


def check_ulimit(name: str, soft: int, hard: int) -> None:
    if name not in ULIMITS:
        raise PrivilegeError(f"unknown ulimit {name!r} (known: {', '.join(ULIMITS)})")
    for what, v in (("soft", soft), ("hard", hard)):
        if v < UNLIMITED:
            raise PrivilegeError(f"ulimit {name}: {what} limit {v} is negative (-1 means unlimited)")
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        raise PrivilegeError(f"ulimit {name}: soft limit ({_show(soft)}) exceeds the hard limit ({_show(hard)})")


def _show(v: int) -> str:
    return "unlimited" if v == UNLIMITED else str(v)


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """NAME=SOFT[:HARD] (HARD defaults to SOFT), as `docker run --ulimit`."""
    name, sep, rest = text.partition("=")
    name = name.strip().lower()
    if not sep or not name or not rest:
        raise PrivilegeError(f"expected NAME=SOFT[:HARD] such as nofile=1024:4096 (got {text!r})")
    soft_s, _, hard_s = rest.partition(":")
    soft = _limit(soft_s, "soft", text)
    hard = _limit(hard_s, "hard", text) if hard_s else soft
    check_ulimit(name, soft, hard)
    return name, soft, hard
