"""orch installed on 3 fresh Debian 12 VMs (each its own kernel, pure cgroup
v2) by `orch fleet up`, a service across them, a reboot.

The VMs come from tests/harness/vmfleet.py; `orch fleet up` runs inside the
fleet's network namespace (the only place the VMs are reachable from) with
the run's SSH key, against the wheelhouse `make dist` builds. A registry in
that namespace serves the test images. Figures (fleet up per host, boot,
idle daemon RSS) are printed; run with -s to see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import vmfleet
from tests.vm.registry import PORT, seed_storage, serve_in_netns

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
ORCH = "/opt/orch/bin/orch"
REG = f"{vmfleet.SUBNET}.1:{PORT}"
IMAGE = f"{REG}/library/busybox-multi:latest"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vmfleet.Fleet]:
    t0 = time.monotonic()
    fl = vmfleet.up(3, log=lambda m: print(f"[vmfleet] {m}", flush=True))
    print(f"[vmfleet] 3 VMs answer ssh {time.monotonic() - t0:.1f} s after up()", flush=True)
    reg = None
    try:
        work = tmp_path_factory.mktemp("vmreg")
        reg = serve_in_netns(fl.netns, f"{vmfleet.SUBNET}.1", seed_storage(work), work)
        yield fl
    finally:
        if reg is not None:
            reg.kill()
            reg.wait()
        vmfleet.down(fl)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    subprocess.run(["make", "-s", "dist", f"DIST={d}"], cwd=REPO, check=True, capture_output=True, timeout=600)
    print(f"[dist] make dist {time.monotonic() - t0:.1f} s", flush=True)
    return d / "wheels"


def fleet_up(fl: vmfleet.Fleet, wheels: Path, config: Path, *hosts: str) -> subprocess.CompletedProcess[str]:
    argv = fl.in_netns([sys.executable, "-m", "cli.main", "fleet", "up", "--dist", str(wheels), "--config",
                        str(config), "-i", fl.key, *[a for o in fl.ssh_options()[:3] for a in ("-o", o)], *hosts])
    return subprocess.run(argv, capture_output=True, text=True, timeout=1500, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def orch(fl: vmfleet.Fleet, vm: vmfleet.VM, *args: str, timeout: float = 300) -> str:
    import shlex

    return fl.ssh(vm, " ".join([ORCH, *map(shlex.quote, args)]), timeout=timeout).stdout


def wait_for(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()  # type: ignore[operator]
            if last is True:
                return
        except Exception as e:  # the VM may be rebooting
            last = e
        time.sleep(3)
    raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {last})")


def test_fleet_up_a_service_and_a_reboot(fleet: vmfleet.Fleet, wheels: Path, tmp_path: Path) -> None:
    fl = fleet
    vm1, vm2, vm3 = fl.vms
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(f"insecure-registry: [{REG}]\nheartbeat-period: 2\n")

    # A daemon.yaml with a typo: refused before any host is touched.
    bad = tmp_path / "bad.yaml"
    bad.write_text("insecure-registy: [x]\n")
    r = fleet_up(fl, wheels, bad, vm1.target)
    assert r.returncode == 1 and f"fleet up: nothing done: {bad}:1: unknown option 'insecure-registy'" in \
        " ".join(r.stderr.split()), r.stdout + r.stderr
    assert fl.ssh(vm1, f"test -e {ORCH}", check=False).returncode == 1

    # Two hosts first, then all three: the second run adds vm3 and leaves the others alone.
    t0 = time.monotonic()
    r = fleet_up(fl, wheels, cfg, vm1.target, vm2.target)
    print(f"[fleet up 2 VMs] {time.monotonic() - t0:.1f} s\n{r.stdout}", flush=True)
    assert r.returncode == 0, r.stdout + r.stderr
    t0 = time.monotonic()
    r = fleet_up(fl, wheels, cfg, vm1.target, vm2.target, vm3.target)
    print(f"[fleet up + vm3] {time.monotonic() - t0:.1f} s\n{r.stdout}", flush=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[{vm1.target}] already a manager of the cluster: left as it is" in r.stdout
    assert f"[{vm2.target}] already a worker of the cluster: left as it is" in r.stdout
    assert f"[{vm3.target}] join done" in r.stdout

    nodes = json.loads(orch(fl, vm1, "node", "ls", "--format", "json"))
    assert sorted((n["description"]["hostname"], n["role"], n["status"]["state"]) for n in nodes) == [
        ("vm1", "manager", "ready"), ("vm2", "worker", "ready"), ("vm3", "worker", "ready")]
    for vm in fl.vms:
        assert fl.ssh(vm, "systemctl is-enabled orch; systemctl is-active orch").stdout.split() == \
            ["enabled", "active"]
        assert fl.ssh(vm, "stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"

    # A replicated service across the three, and a global one (a task on each node).
    orch(fl, vm1, "service", "create", "--name", "web", "--replicas", "3", IMAGE, "sleep", "3600", timeout=600)
    orch(fl, vm1, "service", "create", "--name", "mon", "--mode", "global", IMAGE, "sleep", "3600", timeout=600)

    def running(service: str) -> list[dict]:
        ts = json.loads(orch(fl, vm1, "service", "ps", service, "--format", "json"))
        return [t for t in ts if t["desired_state"] == "running" and t["status"]["state"] == "running"]

    by_name = {n["id"]: n["description"]["hostname"] for n in nodes}
    assert {by_name[t["node_id"]] for t in running("web")} == {"vm1", "vm2", "vm3"}
    # Containers are not shielded from the OOM killer as the daemon is.
    pid = fl.ssh(vm2, "systemctl show -p MainPID --value orch").stdout.strip()
    assert fl.ssh(vm2, f"cat /proc/{pid}/oom_score_adj").stdout.strip() == "-900"
    assert fl.ssh(vm2, "for p in $(pgrep -x sleep); do cat /proc/$p/oom_score_adj; done").stdout.split() == \
        ["0", "0"]
    rss = fl.ssh(vm2, f"grep VmRSS /proc/{pid}/status").stdout.split()[1]
    print(f"[rss] idle worker daemon on vm2: {int(rss) / 1024:.1f} MiB", flush=True)

    # Reboot vm3: orch comes back through systemd, the node is READY again and its task runs again.
    boot = fl.ssh(vm3, "cat /proc/sys/kernel/random/boot_id").stdout
    fl.ssh(vm3, "systemctl reboot", check=False)
    t0 = time.monotonic()
    vm3_id = next(i for i, h in by_name.items() if h == "vm3")

    def back() -> bool | str:
        if fl.ssh(vm3, "cat /proc/sys/kernel/random/boot_id", timeout=30).stdout == boot:
            return "not rebooted yet"
        n = json.loads(orch(fl, vm1, "node", "inspect", vm3_id))[0]
        if n["status"]["state"] != "ready":
            return f"vm3 is {n['status']['state']}"
        on3 = [t for t in running("mon") if t["node_id"] == vm3_id]
        return bool(on3) or "no mon task running on vm3"

    wait_for("vm3 back, READY, its global task running", back, 900)
    print(f"[reboot] vm3 back and running its task {time.monotonic() - t0:.1f} s after reboot", flush=True)
    assert len(running("web")) == 3
    assert fl.ssh(vm3, "systemctl is-active orch").stdout.strip() == "active"
