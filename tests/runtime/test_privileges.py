"""Capabilities, devices, sysctls, ulimits, init and privileged in the OCI
runtime spec the engine writes, and their effect in real runc containers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.engine import init_binary
from agent.runtime.runtime import ContainerManager
from agent.runtime.spec import (
    DEFAULT_CAPS, INIT_TARGET, RLIM_INFINITY, ContainerSpec, SpecError, build_config, known_capabilities,
)

HAVE_RUNTIME = bool(shutil.which("runc") and shutil.which("conmon") and os.path.exists("/bin/busybox"))
NET_ADMIN_BIT = 12


def needs_runtime(f: Any) -> Any:
    f = pytest.mark.root(f)
    return pytest.mark.skipif(not HAVE_RUNTIME, reason="needs runc, conmon and busybox-static")(f)


def config(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return build_config(ContainerSpec(args=["sh"], **kw), {}, str(tmp_path), container_id="c" * 64,
                        cgroups_path="/t/c")


def test_capabilities_in_every_set(tmp_path: Path) -> None:
    caps = config(tmp_path, cap_add=["net_admin"], cap_drop=["CAP_MKNOD"])["process"]["capabilities"]
    want = sorted(set(DEFAULT_CAPS) - {"CAP_MKNOD"} | {"CAP_NET_ADMIN"})
    assert caps == {"bounding": want, "effective": want, "permitted": want}
    only = config(tmp_path, cap_add=["NET_ADMIN"], cap_drop=["ALL"])["process"]["capabilities"]["effective"]
    assert only == ["CAP_NET_ADMIN"]
    assert config(tmp_path, cap_add=["ALL"])["process"]["capabilities"]["bounding"] == sorted(known_capabilities())
    with pytest.raises(SpecError, match=r"cap_add\[0\]: unknown capability 'BOGUS'"):
        config(tmp_path, cap_add=["BOGUS"])


def test_devices_get_a_node_and_a_cgroup_rule(tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse here")
    st = os.stat("/dev/fuse")
    linux = config(tmp_path, devices=["/dev/fuse:/dev/f:rw"])["linux"]
    assert linux["devices"] == [{"path": "/dev/f", "type": "c", "major": os.major(st.st_rdev),
                                 "minor": os.minor(st.st_rdev), "fileMode": st.st_mode & 0o7777, "uid": 0, "gid": 0}]
    # The allow rule comes after the default deny of fuse, so it wins.
    rules = linux["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert rules[-1] == {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"}
    with pytest.raises(SpecError, match=r"devices\[0\]: /nonexistent: No such file"):
        config(tmp_path, devices=["/nonexistent"])
    with pytest.raises(SpecError, match=r"devices\[0\]: /etc/hostname is not a device node"):
        config(tmp_path, devices=["/etc/hostname"])


def test_sysctls_rlimits_and_init(tmp_path: Path) -> None:
    cfg = config(tmp_path, sysctls={"net.core.somaxconn": "1024"}, ulimits=[("nofile", 100, 200), ("core", -1, -1)],
                 init="/usr/bin/tini-static", netns="/run/netns/x")
    assert cfg["linux"]["sysctl"] == {"net.ipv4.ping_group_range": "0 2147483647", "net.core.somaxconn": "1024"}
    assert cfg["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
                                         {"type": "RLIMIT_CORE", "soft": RLIM_INFINITY, "hard": RLIM_INFINITY}]
    assert cfg["process"]["args"] == [INIT_TARGET, "--", "sh"]
    assert {"destination": INIT_TARGET, "type": "bind", "source": "/usr/bin/tini-static",
            "options": ["rbind", "ro"]} in cfg["mounts"]
    plain = config(tmp_path)
    assert "rlimits" not in plain["process"] and "sysctl" not in plain["linux"]
    assert plain["process"]["args"] == ["sh"]
    assert all(m["destination"] != INIT_TARGET for m in plain["mounts"])


def test_privileged_is_everything(tmp_path: Path) -> None:
    cfg = config(tmp_path, privileged=True)
    assert cfg["process"]["capabilities"]["effective"] == sorted(known_capabilities())
    assert len(known_capabilities()) > 30
    linux = cfg["linux"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "/dev/null" in {d["path"] for d in linux["devices"]}
    assert not any(d["path"].startswith("/dev/pts/") for d in linux["devices"])
    assert "seccomp" not in linux and "maskedPaths" not in linux
    sysfs = [m for m in cfg["mounts"] if m["destination"] in ("/sys", "/sys/fs/cgroup")]
    assert len(sysfs) == 2 and all("ro" not in m["options"] for m in sysfs)
    assert cfg["process"]["noNewPrivileges"] is False


# -- real containers ------------------------------------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (r / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", r / "bin/busybox")
    for a in ("sh", "cat", "grep", "test", "echo", "awk"):
        os.symlink("busybox", r / "bin" / a)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\n")
    return r


PROBE = ("grep CapEff /proc/self/status; test -c /dev/fuse && echo fuse-node; "
         "(: < /dev/fuse) 2>/dev/null && echo fuse-open; cat /proc/sys/net/core/somaxconn; "
         "echo nofile $(ulimit -n) $(ulimit -Hn); echo pid1 $(cat /proc/1/comm); "
         "grep ' /sys sysfs ' /proc/mounts")


async def probe(mgr: ContainerManager, rootfs: Path, **spec: Any) -> dict[str, Any]:
    rec = await mgr.run(ContainerSpec(args=["sh", "-c", PROBE], **spec), str(rootfs), {})
    code = await mgr.wait(rec.id, timeout=20)
    lines = [line async for _, _, line in mgr.logs(rec.id)]
    await mgr.remove(rec.id, force=True)
    assert code == 0, lines
    return {"caps": int(lines[0].split()[1], 16), "lines": lines}


def _field(lines: list[str], prefix: str) -> list[str]:
    return next(line.split()[1:] for line in lines if line.startswith(prefix))


@needs_runtime
async def test_in_real_containers(mgr: ContainerManager, rootfs: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse here")
    try:
        init = init_binary()
    except SpecError:
        pytest.skip("no tini here (Debian package tini)")
    granted = await probe(mgr, rootfs, cap_add=["NET_ADMIN"], devices=["/dev/fuse"],
                          sysctls={"net.core.somaxconn": "777"}, ulimits=[("nofile", 321, 654)], init=init)
    lines = granted["lines"]
    assert granted["caps"] >> NET_ADMIN_BIT & 1, lines
    assert "fuse-node" in lines and "fuse-open" in lines
    assert "777" in lines
    assert _field(lines, "nofile") == ["321", "654"]
    assert _field(lines, "pid1") == [os.path.basename(INIT_TARGET)]
    assert _field(lines, "sysfs")[2].split(",")[0] == "ro"

    plain = await probe(mgr, rootfs)
    lines = plain["lines"]
    assert not plain["caps"] >> NET_ADMIN_BIT & 1
    assert "fuse-node" not in lines and "fuse-open" not in lines
    assert _field(lines, "pid1") == ["sh"]

    priv = await probe(mgr, rootfs, privileged=True)
    lines = priv["lines"]
    with open("/proc/self/status") as f:
        bnd = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    assert priv["caps"] == bnd
    assert "fuse-node" in lines and "fuse-open" in lines
    assert _field(lines, "sysfs")[2].split(",")[0] == "rw"


def test_a_plain_container_request_is_checked_as_a_service_is() -> None:
    from agent.engine import RunRequest, _privileges

    got = _privileges(RunRequest(image="x", devices=("/dev/fuse:rw", "/dev/sda:/dev/xvda"),
                                 sysctls={"net.core.somaxconn": "9"}, ulimits=("nofile=1:2", "core=unlimited")))
    assert got == {"devices": ["/dev/fuse:/dev/fuse:rw", "/dev/sda:/dev/xvda:rwm"],
                   "sysctls": {"net.core.somaxconn": "9"}, "ulimits": [("nofile", 1, 2), ("core", -1, -1)],
                   "init": None}
    for req, message in ((RunRequest(image="x", devices=("fuse",)), r"devices\[0\]: device path on the host"),
                         (RunRequest(image="x", sysctls={"vm.swappiness": "1"}), r"sysctls.vm.swappiness: sysctl"),
                         (RunRequest(image="x", ulimits=("nofile=3:2",)), r"ulimits\[0\]: ulimit nofile: soft")):
        with pytest.raises(SpecError, match=message):
            _privileges(req)
