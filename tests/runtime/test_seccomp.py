"""Seccomp profiles: the default profile's rules, Docker-format profile files
and their errors, and their effect in real runc containers.

The container tests run busybox and a small static probe (compiled here from
C with gcc) that makes the syscalls busybox cannot reach: clone with
namespace flags, clone3, socket(AF_VSOCK), personality values, keyctl.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.runtime import ContainerManager
from agent.runtime.seccomp import (
    SeccompError, default_document, default_profile, kernel_version, load_profile, parse_profile,
)
from agent.runtime.spec import DEFAULT_CAPS, ContainerSpec, SpecError, build_config

HAVE_RUNTIME = bool(shutil.which("runc") and shutil.which("conmon") and os.path.exists("/bin/busybox"))

def needs_runtime(f: Any) -> Any:
    """Marks a test that runs real containers."""
    f = pytest.mark.root(f)
    return pytest.mark.skipif(not HAVE_RUNTIME, reason="needs runc, conmon and busybox-static")(f)


APPLETS = ["sh", "echo", "sleep", "cat", "ls", "grep", "true", "unshare", "wc"]

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Prints "NAME ERRNO" (0 = the call succeeded) for each check named. */

static int err(long r) { return r < 0 ? errno : 0; }

/* A clone-like call: the child exits at once, the parent reaps it. */
static int forked(long r) {
    if (r == 0) _exit(0);
    int e = err(r);
    if (r > 0) waitpid((pid_t)r, NULL, 0);
    return e;
}

/* A call that changes its caller runs in a child; its errno is the exit code. */
static int in_child(int which) {
    pid_t p = fork();
    if (p < 0) return errno;
    if (p == 0) {
        long r = -1;
        if (which == 0) r = unshare(CLONE_NEWUSER);
        if (which == 1) r = ptrace(PTRACE_TRACEME, 0, NULL, NULL);
        _exit(err(r));
    }
    int st = 0;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 255;
}

static int sock(int family, int type) {
    int s = socket(family, type, 0);
    int e = err(s);
    if (s >= 0) close(s);
    return e;
}

static int persona(unsigned long p) {
    int e = err(personality(p));
    personality(PER_LINUX);
    return e;
}

int main(int argc, char **argv) {
    uint64_t cargs[8] = {0};
    cargs[4] = SIGCHLD; /* clone_args.exit_signal */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int e = -1;
        if (!strcmp(a, "clone")) e = forked(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
        else if (!strcmp(a, "clone_newuser")) e = forked(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
        else if (!strcmp(a, "clone3")) e = forked(syscall(SYS_clone3, cargs, sizeof cargs));
        else if (!strcmp(a, "unshare_user")) e = in_child(0);
        else if (!strcmp(a, "ptrace")) e = in_child(1);
        else if (!strcmp(a, "socket_unix")) e = sock(AF_UNIX, SOCK_STREAM);
        else if (!strcmp(a, "socket_inet")) e = sock(AF_INET, SOCK_DGRAM);
        else if (!strcmp(a, "socket_alg")) e = sock(38, SOCK_SEQPACKET);
        else if (!strcmp(a, "socket_vsock")) e = sock(40, SOCK_STREAM);
        else if (!strcmp(a, "personality_linux32")) e = persona(PER_LINUX32);
        else if (!strcmp(a, "personality_norandom")) e = persona(PER_LINUX | ADDR_NO_RANDOMIZE);
        else if (!strcmp(a, "keyctl")) e = err(syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0));
        printf("%s %d\n", a, e);
    }
    return 0;
}
"""
PROBES = ["clone", "clone_newuser", "clone3", "unshare_user", "ptrace", "socket_unix", "socket_inet",
          "socket_alg", "socket_vsock", "personality_linux32", "personality_norandom", "keyctl"]


# -- the default profile as data ------------------------------------------------


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for s in profile["syscalls"] if name in s["names"]]


def allowed_plain(profile: dict[str, Any], name: str) -> bool:
    return any(s["action"] == "SCMP_ACT_ALLOW" and not s.get("args") for s in rules_for(profile, name))


def test_default_profile_shape_and_capability_rules() -> None:
    p = default_profile(DEFAULT_CAPS, "x86_64")
    assert (p["defaultAction"], p["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", errno.EPERM)
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for name in ("read", "openat", "execve", "futex", "epoll_pwait", "rt_sigaction", "arch_prctl", "chroot"):
        assert allowed_plain(p, name), name
    for name in ("mount", "umount2", "unshare", "setns", "keyctl", "add_key", "reboot", "init_module",
                 "kexec_load", "bpf", "perf_event_open", "settimeofday", "acct", "kcmp", "iopl", "syslog",
                 "userfaultfd", "io_uring_setup", "open_by_handle_at", "set_mempolicy"):
        assert not rules_for(p, name), name
    # clone: only without namespace flags; clone3: ENOSYS so libc falls back to clone.
    (clone,) = rules_for(p, "clone")
    (arg,) = clone["args"]
    assert (arg["index"], arg["op"], arg["valueTwo"]) == (0, "SCMP_CMP_MASKED_EQ", 0)
    assert arg["value"] & 0x10000000 and arg["value"] & 0x00020000  # CLONE_NEWUSER, CLONE_NEWNS
    assert rules_for(p, "clone3") == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    values = sorted(s["args"][0]["value"] for s in rules_for(p, "personality"))
    assert values == [0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]
    sockets = [(s["args"][0]["op"], s["args"][0]["value"]) for s in rules_for(p, "socket")]
    assert sorted(sockets) == [("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40), ("SCMP_CMP_LT", 38)]
    if kernel_version() >= (4, 8):
        assert allowed_plain(p, "ptrace")

    admin = default_profile([*DEFAULT_CAPS, "SYS_ADMIN"], "x86_64")  # names with or without CAP_
    for name in ("mount", "unshare", "setns", "clone", "clone3", "sethostname"):
        assert allowed_plain(admin, name), name
    assert not [s for s in admin["syscalls"] if s["action"] != "SCMP_ACT_ALLOW"]
    gated = {"CAP_SYS_PTRACE": "kcmp", "CAP_SYS_MODULE": "finit_module", "CAP_SYS_BOOT": "reboot",
             "CAP_SYS_TIME": "clock_settime", "CAP_SYS_NICE": "mbind", "CAP_SYS_PACCT": "acct",
             "CAP_SYS_RAWIO": "iopl", "CAP_SYSLOG": "syslog", "CAP_BPF": "bpf", "CAP_PERFMON": "perf_event_open",
             "CAP_DAC_READ_SEARCH": "open_by_handle_at", "CAP_SYS_TTY_CONFIG": "vhangup"}
    for cap, name in gated.items():
        assert allowed_plain(default_profile([cap], "x86_64"), name), cap
    assert not allowed_plain(default_profile([c for c in DEFAULT_CAPS if c != "CAP_SYS_CHROOT"], "x86_64"), "chroot")


def test_default_profile_per_architecture() -> None:
    arm = default_profile(DEFAULT_CAPS, "aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert allowed_plain(arm, "set_tls") and allowed_plain(arm, "cacheflush")
    assert not rules_for(arm, "arch_prctl") and not rules_for(arm, "modify_ldt")
    assert default_profile(DEFAULT_CAPS, "arm64") == arm
    x86 = default_profile(DEFAULT_CAPS, "amd64")
    assert allowed_plain(x86, "modify_ldt") and not rules_for(x86, "set_tls")
    s390 = default_profile(DEFAULT_CAPS, "s390x")
    assert [s["args"][0]["index"] for s in rules_for(s390, "clone")] == [1]  # flags are clone's 2nd arg there
    with pytest.raises(SeccompError, match="arch: unknown architecture 'sparc'"):
        default_profile(DEFAULT_CAPS, "sparc")


def test_default_document_round_trips_through_the_file_loader(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    path.write_text(json.dumps(default_document()))
    for caps in (DEFAULT_CAPS, [], ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]):
        for arch in ("x86_64", "aarch64", "s390x"):
            assert load_profile(str(path), caps, arch) == default_profile(caps, arch)


def test_load_profile_conditions(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": None}],
        "syscalls": [
            {"name": "keyctl", "action": "SCMP_ACT_ERRNO"},  # the old one-name form
            {"names": ["a1"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]}},
            {"names": ["a2"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]}},
            {"names": ["a3"], "action": "SCMP_ACT_LOG", "includes": {"arches": ["arm64"]}},
            {"names": ["a4"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "includes": {"minKernel": "3.0"}},
            {"names": ["a5"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "99.0"}},
            {"names": ["a6"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "3.0"}},
            {"names": ["a7"], "action": "SCMP_ACT_ALLOW", "comment": "kept",
             "args": [{"index": 1, "value": 4, "op": "SCMP_CMP_MASKED_EQ"}]},
        ],
    }))
    p = load_profile(str(path), ["CAP_SYS_ADMIN"], "x86_64")
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert [s["names"][0] for s in p["syscalls"]] == ["keyctl", "a4", "a7"]
    assert p["syscalls"][1] == {"names": ["a4"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
    assert p["syscalls"][2]["args"] == [{"index": 1, "value": 4, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    both = load_profile(str(path), ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"], "aarch64")
    assert both["architectures"] == ["SCMP_ARCH_AARCH64"]
    assert [s["names"][0] for s in both["syscalls"]] == ["keyctl", "a1", "a3", "a4", "a7"]
    assert [s["names"][0] for s in load_profile(str(path), [], "x86_64")["syscalls"]] == ["keyctl", "a2", "a4", "a7"]


BAD_PROFILES: list[tuple[Any, str]] = [
    ([], "must be an object, got list"),
    ({"syscalls": []}, "defaultAction: required"),
    ({"defaultAction": "SCMP_ACT_DENY"}, "defaultAction: unknown value 'SCMP_ACT_DENY'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}, "defaultErrnoRet: only valid with"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscall": []}, "syscall: unknown field"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}, "syscalls: must be a list"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
      "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}, "archMap: both 'architectures' and 'archMap'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["x86_64"]}, "architectures[0]: unknown value 'x86_64'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}, "flags[0]: unknown value"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"action": "SCMP_ACT_ALLOW"}]},
     "syscalls[1].names: required"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}, "syscalls[0].action: required"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "name": "write", "action": "SCMP_ACT_ALLOW"}]},
     "syscalls[0]: both 'name' and 'names'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", 7], "action": "SCMP_ACT_ALLOW"}]},
     "syscalls[0].names[1]: must be a non-empty string"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]},
     "syscalls[0].errnoRet: only valid with"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]},
     "syscalls[0].errnoRet: must be an integer"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW",
                                                        "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]},
     "syscalls[0].args[0].index: must be an integer in [0, 5]"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW",
                                                        "args": [{"index": 0, "value": 0, "op": "EQ"}]}]},
     "syscalls[0].args[0].op: unknown value 'EQ'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW",
                                                        "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}]},
     "syscalls[0].args[0].value: required"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW",
                                                        "includes": {"minKernel": "4"}}]},
     "syscalls[0].includes.minKernel: must be"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW",
                                                        "excludes": {"caps": ["SYS_ADMIN"]}}]},
     "syscalls[0].excludes.caps[0]: 'SYS_ADMIN' is not a capability name"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_ALLOW",
                                                        "includes": {"arches": ["x86_64"]}}]},
     "syscalls[0].includes.arches[0]: unknown value 'x86_64'"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_NOTIFY"}]},
     "listenerPath: required when"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_PROFILES)
def test_load_profile_rejects_bad_documents(tmp_path: Path, doc: Any, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SeccompError) as e:
        load_profile(str(path), DEFAULT_CAPS, "x86_64")
    assert str(e.value).startswith(f"{path}: "), str(e.value)
    assert message in str(e.value)


def test_load_profile_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SeccompError, match=r"missing\.json: cannot read the seccomp profile: No such file"):
        load_profile(str(tmp_path / "missing.json"), [])
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "defaultAction": "SCMP_ACT_ERRNO",\n  "syscalls": [,]\n}')
    with pytest.raises(SeccompError, match=r"broken\.json: invalid JSON at line 3 column"):
        load_profile(str(broken), [])
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'{"defaultAction": "\xff"}')
    with pytest.raises(SeccompError, match=r"bin\.json: not UTF-8"):
        load_profile(str(binary), [])


def test_build_config_seccomp_field(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    image = {"Cmd": ["true"]}

    def linux(**kw: Any) -> dict[str, Any]:
        cfg = build_config(ContainerSpec(**kw), image, str(tmp_path), container_id="c" * 64, cgroups_path="/t/c")
        return cfg["linux"]

    caps = linux()["seccomp"]
    assert caps == default_profile(DEFAULT_CAPS)
    assert allowed_plain(linux(cap_add=["SYS_ADMIN"])["seccomp"], "mount")
    assert "seccomp" not in linux(seccomp="unconfined")
    assert "seccomp" not in linux(privileged=True)
    assert "seccomp" not in linux(privileged=True, seccomp=str(tmp_path / "missing.json"))
    with pytest.raises(SpecError, match=r"seccomp: .*missing\.json: cannot read"):
        linux(seccomp=str(tmp_path / "missing.json"))


# -- real containers ------------------------------------------------------------


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The probe binary, or None when this host cannot build static C programs."""
    if not shutil.which("gcc"):
        return None
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(PROBE_C)
    r = subprocess.run(["gcc", "-static", "-O1", "-o", str(d / "probe"), str(d / "probe.c")],
                       capture_output=True, text=True, timeout=60)
    return d / "probe" if r.returncode == 0 else None


@pytest.fixture
def rootfs(tmp_path: Path, probe: Path | None) -> Path:
    r = tmp_path / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "mnt"):
        (r / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", r / "bin/busybox")
    for a in APPLETS:
        os.symlink("busybox", r / "bin" / a)
    if probe is not None:
        shutil.copy(probe, r / "bin/probe")
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\n")
    return r


# One script per container: the seccomp mode, ordinary busybox work, busybox
# unshare (its message and status), then the probe when there is one.
SCRIPT = (
    "grep '^Seccomp:' /proc/self/status; "
    "ls / | grep -c bin; sleep 0.05 && echo slept; echo data > /tmp/f && cat /tmp/f; "
    "for ns in -U -m; do unshare $ns true 2>&1; echo \"unshare $ns: $?\"; done; "
    "[ -x /bin/probe ] && probe " + " ".join(PROBES) + "; true"
)


async def run_script(mgr: ContainerManager, rootfs: Path, **spec: Any) -> dict[str, Any]:
    rec = await mgr.run(ContainerSpec(args=["sh", "-c", SCRIPT], **spec), str(rootfs), {})
    code = await mgr.wait(rec.id, timeout=20)
    lines = [line async for _, _, line in mgr.logs(rec.id)]
    await mgr.remove(rec.id, force=True)
    assert code == 0, lines
    out: dict[str, Any] = {"lines": lines, "probe": {}}
    for line in lines:
        if line.startswith("Seccomp:"):
            out["mode"] = int(line.split()[1])
        elif line.startswith("unshare -"):
            out[line.split(":")[0]] = int(line.split(":")[1])
        elif line.split(" ")[0] in PROBES:
            out["probe"][line.split()[0]] = int(line.split()[1])
    assert lines[1:4] == ["1", "slept", "data"], lines
    return out


@needs_runtime
async def test_default_profile_in_a_container(mgr: ContainerManager, rootfs: Path) -> None:
    out = await run_script(mgr, rootfs)
    assert out["mode"] == 2
    # Creating a user namespace needs no capability: only seccomp refuses it.
    assert out["unshare -U"] != 0 and out["unshare -m"] != 0
    assert "unshare: unshare(0x10000000): Operation not permitted" in out["lines"], out["lines"]
    p = out["probe"]
    if not p:
        pytest.skip("no gcc with a static libc to build the probe; busybox checks passed")
    assert p["clone"] == 0 and p["clone_newuser"] == errno.EPERM
    assert p["clone3"] == errno.ENOSYS
    assert p["unshare_user"] == errno.EPERM
    assert p["socket_unix"] == 0 and p["socket_inet"] == 0
    assert p["socket_vsock"] == errno.EPERM and p["socket_alg"] == errno.EPERM
    assert p["personality_linux32"] == 0 and p["personality_norandom"] == errno.EPERM
    assert p["keyctl"] == errno.EPERM
    assert p["ptrace"] == (0 if kernel_version() >= (4, 8) else errno.EPERM)


@needs_runtime
async def test_unconfined_and_privileged_have_no_filter(mgr: ContainerManager, rootfs: Path) -> None:
    out = await run_script(mgr, rootfs, seccomp="unconfined")
    assert out["mode"] == 0
    assert out["unshare -U"] == 0, out["lines"]  # what the default profile refused
    assert out["unshare -m"] != 0  # still no CAP_SYS_ADMIN
    p = out["probe"]
    if p:
        assert p["clone_newuser"] == 0 and p["unshare_user"] == 0 and p["personality_norandom"] == 0
        assert p["clone3"] == 0
        assert errno.EPERM not in (p["socket_vsock"], p["socket_alg"], p["keyctl"])
    priv = await run_script(mgr, rootfs, privileged=True)
    assert priv["mode"] == 0
    assert priv["unshare -U"] == 0 and priv["unshare -m"] == 0


@needs_runtime
async def test_capability_opens_its_syscalls_and_custom_profile_closes_them(
    mgr: ContainerManager, rootfs: Path, tmp_path: Path
) -> None:
    admin = await run_script(mgr, rootfs, cap_add=["SYS_ADMIN"])
    assert admin["mode"] == 2
    assert admin["unshare -U"] == 0 and admin["unshare -m"] == 0, admin["lines"]
    if admin["probe"]:
        assert admin["probe"]["clone_newuser"] == 0 and admin["probe"]["clone3"] == 0
        assert admin["probe"]["keyctl"] == errno.EPERM  # the rest of the profile still holds

    # A custom profile: allow everything, but refuse unshare with EACCES
    # when the container holds CAP_SYS_ADMIN (so the errno shows this rule
    # matched, not the capability check).
    profile = tmp_path / "no-unshare.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
                      "includes": {"caps": ["CAP_SYS_ADMIN"]}}],
    }))
    denied = await run_script(mgr, rootfs, cap_add=["SYS_ADMIN"], seccomp=str(profile))
    assert denied["mode"] == 2
    assert denied["unshare -U"] != 0 and denied["unshare -m"] != 0
    assert "unshare: unshare(0x20000): Permission denied" in denied["lines"], denied["lines"]
    # Without the capability the rule is left out: user namespaces work again.
    plain = await run_script(mgr, rootfs, seccomp=str(profile))
    assert plain["mode"] == 2 and plain["unshare -U"] == 0, plain["lines"]


@needs_runtime
async def test_exec_runs_under_the_containers_profile(mgr: ContainerManager, rootfs: Path) -> None:
    rec = await mgr.run(ContainerSpec(args=["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]),
                        str(rootfs), {})
    try:
        code, out = await mgr.exec(rec.id, ["sh", "-c", "grep '^Seccomp:' /proc/self/status; unshare -U true"])
        assert code != 0
        assert out.split(b"\n")[0].split() == [b"Seccomp:", b"2"]
        assert b"Operation not permitted" in out
    finally:
        await mgr.stop(rec.id, timeout=5)
