"""The engine's seccomp profiles: the built-in default and user-given
Docker-format profile files, both turned into the OCI runtime-spec
`linux.seccomp` object that runc loads.

The default profile has the same effect as Docker's default: every syscall
fails with EPERM unless a rule allows it; an allow-list covers what ordinary
programs need; syscalls that reach kernel-wide state (mounts, namespaces,
modules, the clock, tracing other processes...) are allowed only when the
container holds the capability that the kernel would check anyway, so a
container given a capability can actually use it; clone without
CAP_SYS_ADMIN may not ask for new namespaces, and clone3 (whose flags live
in memory a filter cannot read) answers ENOSYS so libc falls back to clone;
personality is limited to a few harmless personas; socket() may not open
AF_ALG or AF_VSOCK sockets.

Our table (`DEFAULT_ALLOW`, `DEFAULT_RULES`) holds the rules with their
conditions; `_select` keeps the rules whose conditions hold for a
container's capabilities, the host's architecture and kernel, the same way
for the table and for Docker-format files (whose `includes`/`excludes` it
reads into the same structures).

Pure apart from reading the profile file and asking the host for its
architecture and kernel version when the caller does not say.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from api.arch import machine_arch

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"

ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    ERRNO, "SCMP_ACT_TRACE", ALLOW, "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})
OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
})
FLAGS = frozenset({"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"})
SCMP_ARCHES = frozenset({
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64",
})
# Names profiles use in includes/excludes "arches" (libseccomp's spelling).
PROFILE_ARCH_NAMES = frozenset({
    "x86", "amd64", "x32", "arm", "arm64", "mips", "mipsel", "mips64", "mips64n32", "mipsel64",
    "mipsel64n32", "mips3l64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x", "riscv64",
    "loongarch64",
})

ARG_INDEXES = range(6)  # a syscall has at most six arguments
U64 = (1 << 64) - 1


class SeccompError(ValueError):
    """A profile that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class HostArch:
    profile_name: str  # how profiles name it in includes/excludes ("amd64")
    native: str  # SCMP_ARCH_* of the kernel's own ABI
    compat: tuple[str, ...] = ()  # other ABIs the same kernel runs (32-bit, x32)


# Keyed by `uname -m`. A filter must list the compat ABIs too: a rule only
# applies to the architectures the filter was built for, and any other ABI
# would hit the default action for every syscall.
HOST_ARCHES: dict[str, HostArch] = {
    "x86_64": HostArch("amd64", "SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    "aarch64": HostArch("arm64", "SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
    "s390x": HostArch("s390x", "SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
    "ppc64le": HostArch("ppc64le", "SCMP_ARCH_PPC64LE"),
    "riscv64": HostArch("riscv64", "SCMP_ARCH_RISCV64"),
    "loongarch64": HostArch("loongarch64", "SCMP_ARCH_LOONGARCH64"),
}


@dataclass(frozen=True)
class Cond:
    """A rule's condition. As an inclusion every part must hold (all caps
    granted, host arch listed, kernel at least min_kernel); as an exclusion
    any part that holds drops the rule."""

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
class Arg:
    index: int
    value: int
    op: str
    value_two: int = 0


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: str = ALLOW
    errno_ret: int | None = None
    args: tuple[Arg, ...] = ()
    include: Cond | None = None
    exclude: Cond | None = None


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Allowed for every container, grouped by what they are for. Syscalls a
# kernel or libseccomp does not know are skipped by runc, so names of newer
# syscalls (and of other ABIs: chown32, mmap2...) are listed freely.
DEFAULT_ALLOW: dict[str, tuple[str, ...]] = {
    "files": _names("""
        access faccessat faccessat2 open openat openat2 creat close close_range dup dup2 dup3
        read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2
        lseek _llseek readahead fadvise64 fadvise64_64 fallocate truncate truncate64 ftruncate
        ftruncate64 fsync fdatasync sync syncfs sync_file_range flock fcntl fcntl64 ioctl
        sendfile sendfile64 splice tee vmsplice copy_file_range cachestat
        stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx statfs statfs64
        fstatfs fstatfs64
        chmod fchmod fchmodat fchmodat2 chown chown32 fchown fchown32 fchownat lchown lchown32
        umask utime utimes utimensat utimensat_time64 futimesat
        mkdir mkdirat rmdir mknod mknodat link linkat symlink symlinkat unlink unlinkat
        rename renameat renameat2 readlink readlinkat chdir fchdir getcwd getdents getdents64
        name_to_handle_at listmount statmount
    """),
    "xattrs": _names("""
        getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat
        listxattr llistxattr flistxattr listxattrat removexattr lremovexattr fremovexattr
        removexattrat
    """),
    "events": _names("""
        select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
        epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old epoll_pwait
        epoll_pwait2 eventfd eventfd2 signalfd signalfd4 pipe pipe2
        inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
        timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
    """),
    "async io": _names("""
        io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
        ioprio_get ioprio_set
    """),
    "memory": _names("""
        brk mmap mmap2 munmap mremap mprotect madvise mincore msync remap_file_pages
        mlock mlock2 mlockall munlock munlockall membarrier memfd_create memfd_secret
        pkey_alloc pkey_free pkey_mprotect map_shadow_stack mseal
    """),
    "processes": _names("""
        fork vfork execve execveat exit exit_group wait4 waitid waitpid
        getpid getppid gettid getpgid setpgid getpgrp getsid setsid set_tid_address
        prctl getrlimit setrlimit ugetrlimit prlimit64 getrusage times
        getpriority setpriority getcpu uname sysinfo getrandom restart_syscall rseq uretprobe
        riscv_hwprobe capget capset seccomp landlock_create_ruleset landlock_add_rule
        landlock_restrict_self pidfd_open pidfd_send_signal process_mrelease
        get_thread_area set_thread_area get_robust_list set_robust_list
        futex futex_time64 futex_waitv futex_wait futex_wake futex_requeue
    """),
    "scheduling": _names("""
        sched_yield sched_getaffinity sched_setaffinity sched_getattr sched_setattr
        sched_getparam sched_setparam sched_getscheduler sched_setscheduler
        sched_get_priority_max sched_get_priority_min sched_rr_get_interval
        sched_rr_get_interval_time64
    """),
    "credentials": _names("""
        getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32
        getresuid getresuid32 getresgid getresgid32 getgroups getgroups32
        setuid setuid32 setgid setgid32 setreuid setreuid32 setregid setregid32
        setresuid setresuid32 setresgid setresgid32 setfsuid setfsuid32 setfsgid setfsgid32
        setgroups setgroups32
    """),
    "signals": _names("""
        kill tkill tgkill pause alarm sigaltstack sigprocmask sigreturn
        rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_tgsigqueueinfo rt_sigreturn
        rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
    """),
    "time": _names("""
        time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
        clock_nanosleep clock_nanosleep_time64 nanosleep getitimer setitimer
        timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
        timer_settime64
    """),
    # Without CAP_SYS_TIME the kernel lets these only read the clock.
    "clock tuning": _names("adjtimex clock_adjtime clock_adjtime64"),
    "sockets": _names("""
        socketpair socketcall bind connect listen accept accept4 shutdown
        getsockname getpeername getsockopt setsockopt
        send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64
    """),
    "ipc": _names("""
        ipc msgget msgctl msgsnd msgrcv semget semctl semop semtimedop semtimedop_time64
        shmget shmctl shmat shmdt
        mq_open mq_unlink mq_getsetattr mq_notify mq_timedsend mq_timedsend_time64
        mq_timedreceive mq_timedreceive_time64
    """),
}

# The namespace flags clone may not carry without CAP_SYS_ADMIN.
CLONE_NS_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x02000000  # CLONE_NEWCGROUP
)
AF_ALG = 38
AF_VSOCK = 40
# personality(2) values that only ask for a classic persona (PER_LINUX,
# PER_LINUX32, with UNAME26) or query (0xffffffff); others such as
# ADDR_NO_RANDOMIZE weaken the process's own hardening.
PERSONAS = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

SYS_ADMIN = "CAP_SYS_ADMIN"

# Rules after the plain allow-list, each with its condition.
DEFAULT_RULES: tuple[Rule, ...] = (
    # Tracing one's own children is safe since 4.8 (seccomp is rechecked
    # after the tracer changes a syscall).
    Rule(_names("ptrace process_vm_readv process_vm_writev"), include=Cond(min_kernel=(4, 8))),
    # Every address family but AF_ALG (38) and AF_VSOCK (40).
    Rule(("socket",), args=(Arg(0, AF_ALG, "SCMP_CMP_LT"),)),
    Rule(("socket",), args=(Arg(0, AF_ALG + 1, "SCMP_CMP_EQ"),)),
    Rule(("socket",), args=(Arg(0, AF_VSOCK, "SCMP_CMP_GT"),)),
    *(Rule(("personality",), args=(Arg(0, p, "SCMP_CMP_EQ"),)) for p in PERSONAS),
    # Architecture-specific calls.
    Rule(("sync_file_range2", "swapcontext"), include=Cond(arches=("ppc64le",))),
    Rule(_names("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
         include=Cond(arches=("arm", "arm64"))),
    Rule(("arch_prctl",), include=Cond(arches=("amd64", "x32"))),
    Rule(("modify_ldt",), include=Cond(arches=("amd64", "x32", "x86"))),
    Rule(("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
         include=Cond(arches=("s390", "s390x"))),
    Rule(("riscv_flush_icache",), include=Cond(arches=("riscv64",))),
    # Calls the kernel gates behind a capability: allowed when it is granted.
    Rule(("open_by_handle_at",), include=Cond(caps=("CAP_DAC_READ_SEARCH",))),
    Rule(_names("""
        bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
        lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount
        open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog
        umount umount2 unshare
    """), include=Cond(caps=(SYS_ADMIN,))),
    # Without CAP_SYS_ADMIN: clone only without namespace flags (the flags
    # are the second argument on s390), and clone3 reports ENOSYS.
    Rule(("clone",), args=(Arg(0, CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
         exclude=Cond(caps=(SYS_ADMIN,), arches=("s390", "s390x"))),
    Rule(("clone",), args=(Arg(1, CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ", 0),),
         include=Cond(arches=("s390", "s390x")), exclude=Cond(caps=(SYS_ADMIN,))),
    Rule(("clone3",), action=ERRNO, errno_ret=errno.ENOSYS, exclude=Cond(caps=(SYS_ADMIN,))),
    Rule(("reboot",), include=Cond(caps=("CAP_SYS_BOOT",))),
    Rule(("chroot",), include=Cond(caps=("CAP_SYS_CHROOT",))),
    Rule(("delete_module", "init_module", "finit_module"), include=Cond(caps=("CAP_SYS_MODULE",))),
    Rule(("acct",), include=Cond(caps=("CAP_SYS_PACCT",))),
    Rule(_names("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace"),
         include=Cond(caps=("CAP_SYS_PTRACE",))),
    Rule(("iopl", "ioperm"), include=Cond(caps=("CAP_SYS_RAWIO",))),
    Rule(_names("settimeofday stime clock_settime clock_settime64"), include=Cond(caps=("CAP_SYS_TIME",))),
    Rule(("vhangup",), include=Cond(caps=("CAP_SYS_TTY_CONFIG",))),
    Rule(_names("get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
         include=Cond(caps=("CAP_SYS_NICE",))),
    Rule(("syslog",), include=Cond(caps=("CAP_SYSLOG",))),
    Rule(("bpf",), include=Cond(caps=("CAP_BPF",))),
    Rule(("perf_event_open",), include=Cond(caps=("CAP_PERFMON",))),
)


@dataclass(frozen=True)
class Profile:
    """A profile before selection: what a Docker-format file says, or our table."""

    default_action: str
    default_errno_ret: int | None = None
    rules: tuple[Rule, ...] = ()
    architectures: tuple[str, ...] | None = None  # fixed list; None = from arch_map
    arch_map: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    listener_path: str = ""
    listener_metadata: str = ""


def _default() -> Profile:
    base = Rule(tuple(n for group in DEFAULT_ALLOW.values() for n in group))
    arch_map = {a.native: a.compat for a in HOST_ARCHES.values()}
    return Profile(ERRNO, errno.EPERM, (base, *DEFAULT_RULES), arch_map=arch_map)


# -- host facts ---------------------------------------------------------------


def host_arch(arch: str | None = None) -> tuple[str, HostArch | None]:
    """(`uname -m` name, its table entry) for `arch` or this host. An
    explicit name we do not know is an error; an unknown host gets no
    architectures list (libseccomp then builds for the native ABI only)."""
    if arch is None:
        m = platform.machine()
        return m, HOST_ARCHES.get(machine_arch(m))
    m = machine_arch(arch)
    if m not in HOST_ARCHES:
        raise SeccompError(f"arch: unknown architecture {arch!r} (known: {', '.join(sorted(HOST_ARCHES))})")
    return m, HOST_ARCHES[m]


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release such as "6.1.0-18-amd64"."""
    release = release if release is not None else os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _norm_cap(c: str) -> str:
    c = c.strip().upper()
    return c if c.startswith("CAP_") else "CAP_" + c


# -- selection ----------------------------------------------------------------


def _select(profile: Profile, caps: Iterable[str], arch: str | None) -> dict[str, Any]:
    granted = {_norm_cap(c) for c in caps}
    machine, info = host_arch(arch)
    arch_name = info.profile_name if info else machine
    kern = kernel_version()

    def holds_all(c: Cond) -> bool:
        return ((not c.caps or all(x in granted for x in c.caps))
                and (not c.arches or arch_name in c.arches)
                and (c.min_kernel is None or kern >= c.min_kernel))

    def holds_any(c: Cond) -> bool:
        return (any(x in granted for x in c.caps)
                or arch_name in c.arches
                or (c.min_kernel is not None and kern >= c.min_kernel))

    out: dict[str, Any] = {"defaultAction": profile.default_action}
    if profile.default_errno_ret is not None:
        out["defaultErrnoRet"] = profile.default_errno_ret
    if profile.architectures is not None:
        archs = list(profile.architectures)
    elif info is not None and info.native in profile.arch_map:
        archs = [info.native, *profile.arch_map[info.native]]
    else:
        archs = []
    if archs:
        out["architectures"] = archs
    if profile.flags:
        out["flags"] = list(profile.flags)
    if profile.listener_path:
        out["listenerPath"] = profile.listener_path
    if profile.listener_metadata:
        out["listenerMetadata"] = profile.listener_metadata
    syscalls: list[dict[str, Any]] = []
    for r in profile.rules:
        if r.exclude is not None and holds_any(r.exclude):
            continue
        if r.include is not None and not holds_all(r.include):
            continue
        s: dict[str, Any] = {"names": list(r.names), "action": r.action}
        if r.errno_ret is not None:
            s["errnoRet"] = r.errno_ret
        if r.args:
            s["args"] = [{"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op} for a in r.args]
        syscalls.append(s)
    out["syscalls"] = syscalls
    return out


def default_profile(caps: list[str], arch: str | None = None) -> dict[str, Any]:
    """The OCI `linux.seccomp` object of the default profile for a container
    with capabilities `caps` (its bounding set) on `arch` (`uname -m`
    spelling, or amd64/arm64; None = this host)."""
    return _select(_default(), caps, arch)


# -- Docker-format files --------------------------------------------------------


class _Reader:
    """Checks one document, raising SeccompError with `file: field: problem`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, msg: str) -> SeccompError:
        return SeccompError(f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}")

    def obj(self, v: Any, where: str, keys: frozenset[str]) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(where, f"must be an object, got {type(v).__name__}")
        unknown = sorted(set(v) - keys)
        if unknown:
            # A misspelt key in a security profile must not be ignored silently.
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown field (expected one of {', '.join(sorted(keys))})")
        return v

    def str_(self, v: Any, where: str, allowed: frozenset[str] | None = None) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(where, f"must be a non-empty string, got {v!r}")
        if allowed is not None and v not in allowed:
            raise self.fail(where, f"unknown value {v!r} (expected one of {', '.join(sorted(allowed))})")
        return v

    def int_(self, v: Any, where: str, lo: int = 0, hi: int = U64) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(where, f"must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    def list_(self, v: Any, where: str) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(where, f"must be a list, got {type(v).__name__}")
        return v

    @staticmethod
    def opt(d: dict[str, Any], key: str) -> Any:
        """An optional list: absent or null is empty (as Go decodes it); any
        other value must then be a list."""
        v = d.get(key)
        return [] if v is None else v

    def strs(self, v: Any, where: str, allowed: frozenset[str] | None = None) -> tuple[str, ...]:
        if v is None:
            return ()
        return tuple(self.str_(x, f"{where}[{i}]", allowed) for i, x in enumerate(self.list_(v, where)))

    def cond(self, v: Any, where: str) -> Cond | None:
        if v is None:
            return None
        d = self.obj(v, where, frozenset({"caps", "arches", "minKernel"}))
        caps = self.strs(d.get("caps"), f"{where}.caps")
        for i, c in enumerate(caps):
            if not re.fullmatch(r"CAP_[A-Z_]+", c):
                raise self.fail(f"{where}.caps[{i}]", f"{c!r} is not a capability name like CAP_SYS_ADMIN")
        arches = self.strs(d.get("arches"), f"{where}.arches", PROFILE_ARCH_NAMES)
        mk = d.get("minKernel")
        min_kernel: tuple[int, int] | None = None
        if mk not in (None, ""):
            m = re.fullmatch(r"(\d{1,3})\.(\d{1,3})", mk) if isinstance(mk, str) else None
            if m is None or (int(m.group(1)), int(m.group(2))) == (0, 0):
                raise self.fail(f"{where}.minKernel", f'must be "<kernel>.<major>" such as "4.8", got {mk!r}')
            min_kernel = (int(m.group(1)), int(m.group(2)))
        return Cond(caps, arches, min_kernel)

    def arg(self, v: Any, where: str) -> Arg:
        d = self.obj(v, where, frozenset({"index", "value", "valueTwo", "op"}))
        for k in ("index", "value", "op"):
            if k not in d:
                raise self.fail(f"{where}.{k}", "required")
        return Arg(
            index=self.int_(d["index"], f"{where}.index", 0, ARG_INDEXES[-1]),
            value=self.int_(d["value"], f"{where}.value"),
            op=self.str_(d["op"], f"{where}.op", OPERATORS),
            value_two=self.int_(d.get("valueTwo", 0), f"{where}.valueTwo"),
        )

    def rule(self, v: Any, where: str) -> Rule:
        d = self.obj(v, where, frozenset({"names", "name", "action", "errnoRet", "args", "comment",
                                          "includes", "excludes"}))
        if "name" in d and d.get("names"):
            raise self.fail(where, "both 'name' and 'names' are given; use 'names'")
        if "name" in d:
            names: tuple[str, ...] = (self.str_(d["name"], f"{where}.name"),)
        else:
            names = self.strs(d.get("names"), f"{where}.names")
            if not names:
                raise self.fail(f"{where}.names", "required: a non-empty list of syscall names")
        for i, n in enumerate(names):
            if not re.fullmatch(r"[a-z0-9_]+", n):
                raise self.fail(f"{where}.names[{i}]", f"{n!r} is not a syscall name")
        if "action" not in d:
            raise self.fail(f"{where}.action", "required")
        action = self.str_(d["action"], f"{where}.action", ACTIONS)
        errno_ret = None
        if d.get("errnoRet") is not None:
            if action not in (ERRNO, "SCMP_ACT_TRACE"):
                raise self.fail(f"{where}.errnoRet", f"only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}")
            errno_ret = self.int_(d["errnoRet"], f"{where}.errnoRet", 0, 0xFFFF)
        if isinstance(d.get("comment"), (dict, list)):
            raise self.fail(f"{where}.comment", "must be a string")
        args = tuple(self.arg(a, f"{where}.args[{i}]") for i, a in enumerate(self.list_(self.opt(d, "args"), f"{where}.args")))
        return Rule(names, action, errno_ret, args, self.cond(d.get("includes"), f"{where}.includes"),
                    self.cond(d.get("excludes"), f"{where}.excludes"))

    def profile(self, v: Any) -> Profile:
        d = self.obj(v, "", frozenset({"defaultAction", "defaultErrnoRet", "architectures", "archMap", "flags",
                                       "listenerPath", "listenerMetadata", "syscalls"}))
        if "defaultAction" not in d:
            # Docker reads a profile without it as "no seccomp"; a file meant
            # to disable seccomp should say "unconfined" instead.
            raise self.fail("defaultAction", "required (use seccomp \"unconfined\" to run without a profile)")
        action = self.str_(d["defaultAction"], "defaultAction", ACTIONS)
        errno_ret = None
        if d.get("defaultErrnoRet") is not None:
            if action != ERRNO:
                raise self.fail("defaultErrnoRet", f"only valid with defaultAction SCMP_ACT_ERRNO, not {action}")
            errno_ret = self.int_(d["defaultErrnoRet"], "defaultErrnoRet", 0, 0xFFFF)
        architectures = self.strs(d.get("architectures"), "architectures", SCMP_ARCHES)
        if architectures and self.opt(d, "archMap"):
            raise self.fail("archMap", "both 'architectures' and 'archMap' are given; use one")
        arch_map: dict[str, tuple[str, ...]] = {}
        for i, a in enumerate(self.list_(self.opt(d, "archMap"), "archMap")):
            w = f"archMap[{i}]"
            e = self.obj(a, w, frozenset({"architecture", "subArchitectures"}))
            if "architecture" not in e:
                raise self.fail(f"{w}.architecture", "required")
            main = self.str_(e["architecture"], f"{w}.architecture", SCMP_ARCHES)
            arch_map.setdefault(main, self.strs(e.get("subArchitectures"), f"{w}.subArchitectures", SCMP_ARCHES))
        flags = self.strs(d.get("flags"), "flags", FLAGS)
        listener_path = d.get("listenerPath") or ""
        if listener_path:
            listener_path = self.str_(listener_path, "listenerPath")
            if not listener_path.startswith("/"):
                raise self.fail("listenerPath", f"must be an absolute path, got {listener_path!r}")
        listener_metadata = self.str_(d["listenerMetadata"], "listenerMetadata") if d.get("listenerMetadata") else ""
        rules = tuple(self.rule(r, f"syscalls[{i}]") for i, r in enumerate(self.list_(self.opt(d, "syscalls"), "syscalls")))
        uses_notify = action == "SCMP_ACT_NOTIFY" or any(r.action == "SCMP_ACT_NOTIFY" for r in rules)
        if uses_notify and not listener_path:
            raise self.fail("listenerPath", "required when an action is SCMP_ACT_NOTIFY")
        return Profile(action, errno_ret, rules, architectures or None, arch_map, flags, listener_path,
                       listener_metadata)


MAX_PROFILE_BYTES = 4 << 20


def parse_profile(doc: Any, caps: list[str], arch: str | None = None, *, source: str = "profile") -> dict[str, Any]:
    """Convert an already-decoded Docker-format profile (`source` names it in errors)."""
    return _select(_Reader(source).profile(doc), caps, arch)


def load_profile(path: str, caps: list[str], arch: str | None = None) -> dict[str, Any]:
    """Read a Docker-format JSON profile file (rules with `includes` and
    `excludes` by caps, arches and minKernel; `archMap` or `architectures`)
    and return the OCI `linux.seccomp` object for a container with `caps`."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise SeccompError(f"{path}: cannot read the seccomp profile: {e.strerror or e}") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise SeccompError(f"{path}: the seccomp profile is larger than {MAX_PROFILE_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SeccompError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise SeccompError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse_profile(doc, caps, arch, source=path)


def default_document() -> dict[str, Any]:
    """The default profile in Docker's file format (a starting point for a
    custom profile; `load_profile` of it equals `default_profile`)."""
    p = _default()

    def cond(c: Cond) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if c.caps:
            out["caps"] = list(c.caps)
        if c.arches:
            out["arches"] = list(c.arches)
        if c.min_kernel:
            out["minKernel"] = f"{c.min_kernel[0]}.{c.min_kernel[1]}"
        return out

    syscalls: list[dict[str, Any]] = []
    for r in p.rules:
        s: dict[str, Any] = {"names": list(r.names), "action": r.action}
        if r.errno_ret is not None:
            s["errnoRet"] = r.errno_ret
        if r.args:
            s["args"] = [{"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op} for a in r.args]
        if r.include:
            s["includes"] = cond(r.include)
        if r.exclude:
            s["excludes"] = cond(r.exclude)
        syscalls.append(s)
    return {
        "defaultAction": p.default_action,
        "defaultErrnoRet": p.default_errno_ret,
        "archMap": [{"architecture": k, "subArchitectures": list(v)} for k, v in p.arch_map.items()],
        "syscalls": syscalls,
    }
