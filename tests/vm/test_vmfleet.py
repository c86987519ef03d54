"""orch installed on 3 fresh Debian 12 VMs (each its own kernel, pure cgroup
v2) by `orch fleet up`, services across them, a reboot; then, on the same
fleet, a service on an overlay network across the VMs, the engine's memory,
pids and cpu limits with runc and with crun, and a VM powered off (last: it
stays off).

The VMs come from tests/harness/vmfleet.py; `orch fleet up` runs inside the
fleet's network namespace (the only place the VMs are reachable from) with
the run's SSH key, against the wheelhouse `make dist` builds. A registry in
that namespace serves the test images. Figures (fleet up per host, boot,
idle daemon RSS) are printed; run with -s to see them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1500, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def orch(fl: vmfleet.Fleet, vm: vmfleet.VM, *args: str, timeout: float = 300) -> str:
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


def running(fl: vmfleet.Fleet, service: str) -> list[dict[str, Any]]:
    ts = json.loads(orch(fl, fl.vms[0], "service", "ps", service, "--format", "json"))
    return [t for t in ts if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def cluster(fl: vmfleet.Fleet) -> dict[str, str]:
    """Node id -> hostname of the cluster the first test made; skips when there is none."""
    try:
        nodes = json.loads(orch(fl, fl.vms[0], "node", "ls", "--format", "json", timeout=60))
    except RuntimeError as e:
        pytest.skip(f"no orch cluster on the VMs (test_fleet_up_a_service_and_a_reboot failed?): {e}")
    by_name = {n["id"]: n["description"]["hostname"] for n in nodes}
    if sorted(by_name.values()) != [vm.name for vm in fl.vms]:
        pytest.skip(f"the cluster on the VMs is not the three of them: {sorted(by_name.values())}")
    return by_name


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

    # `join done` is the node's certificate and record; READY is its agent's first session with a
    # manager, which comes later under emulation (fleet up's own node ls may still show it Down).
    t0 = time.monotonic()
    nodes: list[dict[str, Any]] = []

    def all_ready() -> bool | str:
        nodes[:] = json.loads(orch(fl, vm1, "node", "ls", "--format", "json"))
        got = sorted((n["description"]["hostname"], n["role"], n["status"]["state"]) for n in nodes)
        return got == [("vm1", "manager", "ready"), ("vm2", "worker", "ready"), ("vm3", "worker", "ready")] or \
            str(got)

    wait_for("the three nodes READY", all_ready, 180)
    print(f"[fleet up + vm3] all three nodes READY {time.monotonic() - t0:.1f} s after fleet up returned",
          flush=True)
    for vm in fl.vms:
        assert fl.ssh(vm, "systemctl is-enabled orch; systemctl is-active orch").stdout.split() == \
            ["enabled", "active"]
        assert fl.ssh(vm, "stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"

    # A replicated service across the three, and a global one (a task on each node).
    orch(fl, vm1, "service", "create", "--name", "web", "--replicas", "3", IMAGE, "sleep", "3600", timeout=600)
    orch(fl, vm1, "service", "create", "--name", "mon", "--mode", "global", IMAGE, "sleep", "3600", timeout=600)

    by_name = {n["id"]: n["description"]["hostname"] for n in nodes}
    assert {by_name[t["node_id"]] for t in running(fl, "web")} == {"vm1", "vm2", "vm3"}
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

    seen: dict[str, float] = {}  # when each stage of the recovery was first seen

    def back() -> bool | str:
        if fl.ssh(vm3, "cat /proc/sys/kernel/random/boot_id", timeout=30).stdout == boot:
            return "not rebooted yet"
        seen.setdefault("ssh", time.monotonic() - t0)
        if fl.ssh(vm3, "systemctl is-active orch", timeout=30, check=False).stdout.strip() != "active":
            return "orch not active on vm3"
        seen.setdefault("orch active", time.monotonic() - t0)
        n = json.loads(orch(fl, vm1, "node", "inspect", vm3_id))[0]
        if n["status"]["state"] != "ready":
            return f"vm3 is {n['status']['state']}"
        seen.setdefault("node ready", time.monotonic() - t0)
        on3 = [t for t in running(fl, "mon") if t["node_id"] == vm3_id]
        return bool(on3) or "no mon task running on vm3"

    wait_for("vm3 back, READY, its global task running", back, 900)
    print(f"[reboot] vm3 back and running its task {time.monotonic() - t0:.1f} s after reboot ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in seen.items()) + ")", flush=True)
    assert len(running(fl, "web")) == 3
    assert fl.ssh(vm3, "systemctl is-active orch").stdout.strip() == "active"


# -- an overlay network across the VMs ---------------------------------------------

# Each task answers TCP on 7000 with its hostname.
SERVE = ("echo '#!/bin/sh' > /tmp/who; echo 'echo hi-$(busybox hostname)' >> /tmp/who; "
         "busybox chmod 755 /tmp/who; exec busybox nc -ll -p 7000 -e /tmp/who")
OVERLAY_SUBNET = "10.88.0.0/24"


def vm_named(fl: vmfleet.Fleet, name: str) -> vmfleet.VM:
    return next(vm for vm in fl.vms if vm.name == name)


def overlay_addr(t: dict[str, Any]) -> str:
    return str(t["networks"][0]["addresses"][0].split("/")[0])


def test_overlay_network_across_the_vms(fleet: vmfleet.Fleet) -> None:
    """A service on an overlay network, a task on each VM: every task reaches the
    others over VXLAN between the VMs' kernels, by address and by name."""
    fl = fleet
    vm1 = fl.vms[0]
    by_name = cluster(fl)
    t0 = time.monotonic()
    orch(fl, vm1, "network", "create", "--subnet", OVERLAY_SUBNET, "vmnet")
    orch(fl, vm1, "service", "create", "--name", "talk", "--replicas", "3", "--network", "vmnet",
         "--stop-signal", "KILL", IMAGE, "sh", "-c", SERVE, timeout=600)
    tasks = {by_name[t["node_id"]]: t for t in running(fl, "talk")}
    print(f"[overlay] network and 3 tasks on it running {time.monotonic() - t0:.1f} s", flush=True)
    assert sorted(tasks) == ["vm1", "vm2", "vm3"], tasks
    addrs = {host: overlay_addr(t) for host, t in tasks.items()}
    assert len(set(addrs.values())) == 3 and all(a.startswith("10.88.0.") for a in addrs.values()), addrs

    def exec_in(host: str, *cmd: str) -> str:
        # As root: the image's user cannot open the raw socket busybox's ping needs.
        return orch(fl, vm_named(fl, host), "container", "exec", "-u", "0",
                    tasks[host]["status"]["container_id"], *cmd, timeout=120)

    # From each VM's task to the tasks on the other two: ICMP and a TCP exchange answered by the peer.
    t0 = time.monotonic()
    for src in tasks:
        others = [addrs[h] for h in tasks if h != src]
        script = ("for ip in " + " ".join(others) + "; do busybox ping -c 1 -W 5 $ip >/dev/null || "
                  "{ echo NOPING $ip; continue; }; echo \"$ip $(busybox nc -w 5 $ip 7000)\"; done")
        out = exec_in(src, "sh", "-c", script)
        got = dict(line.split(" ", 1) for line in out.strip().splitlines())
        assert set(got) == set(others) and all(v.startswith("hi-") for v in got.values()), f"from {src}: {out}"
    # By name at the embedded DNS: tasks.talk lists the three, "talk" (the VIP) answers over TCP.
    out = exec_in("vm1", "busybox", "nslookup", "tasks.talk", "127.0.0.11")
    assert set(addrs.values()) <= set(out.split()), out
    replies = {exec_in("vm2", "sh", "-c", "busybox nc -w 5 talk 7000").strip() for _ in range(3)}
    assert replies and all(r.startswith("hi-") for r in replies), replies
    print(f"[overlay] every task reached the others across the VMs {time.monotonic() - t0:.1f} s", flush=True)

    # Removed: the VXLAN links go from every VM.
    orch(fl, vm1, "service", "rm", "talk")
    orch(fl, vm1, "network", "rm", "vmnet")

    def no_vxlan() -> bool | str:
        left = {vm.name: fl.ssh(vm, "ip -o link show type vxlan", timeout=30).stdout.strip() for vm in fl.vms}
        return not any(left.values()) or f"vxlan links left: {left}"

    wait_for("the overlay's VXLAN links removed from every VM", no_vxlan, 180)


# -- engine limits on pure cgroup v2, with runc and with crun ----------------------

CRUN_DATA = "/var/lib/orch-crun"
CRUN_SOCK = "/run/orch-crun/orch.sock"


def check_names(runtime: str) -> list[str]:
    return [f"{c}-{runtime}" for c in ("mem-ok", "oom", "pids", "cpu")]


def limit_checks(fl: vmfleet.Fleet, vm: vmfleet.VM, cli: str, runtime: str, data_dir: str,
                 cgroup_parent: str) -> dict[str, str]:
    """Memory (an OOM kill reported), pids (fork beyond the limit fails) and cpu (cpu.max, and
    throttled) limits of containers run by the engine's CLI; check -> "pass" or what failed."""
    results: dict[str, str] = {}

    def sh(command: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return fl.ssh(vm, command, timeout=timeout, check=check)

    def cg(cid: str, name: str) -> str:
        return sh(f"cat /sys/fs/cgroup/{cgroup_parent}/{cid}/{name}").stdout.strip()

    def check(name: str, fn: Any) -> None:
        t0 = time.monotonic()
        try:
            fn()
            results[name] = "pass"
        except (AssertionError, RuntimeError, subprocess.TimeoutExpired) as e:
            results[name] = f"FAIL: {' '.join(str(e).split())[:600]}"
        print(f"[limits {runtime}] {name}: {results[name]} ({time.monotonic() - t0:.1f} s)", flush=True)

    def memory() -> None:
        # Within the limit: runs to the end. Past it: the kernel's OOM killer, and the engine says so.
        r = sh(f"{cli} container run --name mem-ok-{runtime} -m 24m {IMAGE} "
               "busybox dd if=/dev/zero of=/dev/null bs=4M count=1", check=False)
        assert r.returncode == 0, f"a 4 MiB buffer under a 24 MiB limit: exit {r.returncode}: {r.stdout}{r.stderr}"
        r = sh(f"{cli} container run --name oom-{runtime} -m 24m {IMAGE} "
               "busybox dd if=/dev/zero of=/dev/null bs=96M count=1", check=False)
        assert r.returncode == 137, f"a 96 MiB buffer under a 24 MiB limit: exit {r.returncode}: {r.stdout}{r.stderr}"
        (c,) = json.loads(sh(f"{cli} container inspect oom-{runtime}").stdout)
        assert (c["status"], c["exit_code"], c["oom_killed"]) == ("exited", 137, True), c
        assert "exited (137) OOM-killed" in sh(f"{cli} container ls -a").stdout

    def pids() -> None:
        # A subshell forks until it cannot (busybox sh ends on a failed fork); the container goes on.
        script = "(i=0; while [ $i -lt 16 ]; do sleep 600 & i=$((i+1)); done); echo loop ended; exec sleep 600"
        cid = sh(f"{cli} container run -d --name pids-{runtime} --pids-limit 8 {IMAGE} "
                 f"sh -c {shlex.quote(script)}").stdout.strip()
        wait_for("the pids container's loop ended", lambda: "loop ended" in sh(
            f"{cli} container logs pids-{runtime} 2>&1").stdout, 120)
        logs = sh(f"{cli} container logs pids-{runtime} 2>&1").stdout
        assert "can't fork" in logs or "Resource temporarily unavailable" in logs, logs
        assert cg(cid, "pids.max") == "8"
        assert int(cg(cid, "pids.current")) <= 8
        events = dict(line.split() for line in cg(cid, "pids.events").splitlines())
        assert int(events["max"]) > 0, events
        # The runtime asked for is the one running it: its state dir holds the container.
        st = json.loads(sh(f"{runtime} --root {data_dir}/engine/runtime state {cid}").stdout)
        assert st["status"] == "running", st

    def cpu() -> None:
        cid = sh(f"{cli} container run -d --name cpu-{runtime} --cpus 0.5 -m 32m {IMAGE} "
                 "sh -c 'while :; do :; done'").stdout.strip()
        assert cg(cid, "cpu.max") == "50000 100000"
        assert cg(cid, "memory.max") == str(32 << 20)

        def throttled() -> bool | str:
            stat = dict(line.split() for line in cg(cid, "cpu.stat").splitlines())
            return int(stat["nr_throttled"]) > 0 or f"cpu.stat: {stat}"

        wait_for("the busy container throttled at 0.5 CPU", throttled, 60)

    def removed() -> None:
        # rm -f takes the containers these checks made and their cgroups away (the cluster's stay).
        cs = {c["name"]: c["id"] for c in json.loads(sh(f"{cli} container ls -a --format json").stdout)}
        ours = {n: cs[n] for n in check_names(runtime) if n in cs}
        assert len(ours) == 4, f"containers of the checks: {sorted(ours)}"
        sh(f"{cli} container rm -f {' '.join(ours)}")
        left = {c["name"] for c in json.loads(sh(f"{cli} container ls -a --format json").stdout)}
        assert not left & set(ours), f"containers left: {left & set(ours)}"
        cgs = sh(f"ls /sys/fs/cgroup/{cgroup_parent}").stdout.split()
        assert not set(cgs) & set(ours.values()), f"cgroups left in /sys/fs/cgroup/{cgroup_parent}: {cgs}"

    check("memory", memory)
    check("pids", pids)
    check("cpu", cpu)
    check("cleanup", removed)
    return results


def test_engine_limits_on_cgroup_v2_with_runc_and_crun(fleet: vmfleet.Fleet) -> None:
    """The engine's memory, pids and cpu limits on a pure cgroup v2 host, with runc (the
    installed daemon's default) and with crun (an engine-only daemon next to it,
    `--runtime crun`)."""
    fl = fleet
    vm = fl.vms[1]
    if fl.ssh(vm, f"test -x {ORCH}", check=False).returncode != 0:
        pytest.skip(f"orch is not installed on {vm.name} (test_fleet_up_a_service_and_a_reboot failed?)")
    assert fl.ssh(vm, "stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    results: dict[str, dict[str, str]] = {}
    try:
        results["runc"] = limit_checks(fl, vm, ORCH, "runc", "/var/lib/orch", "orch")
    finally:
        fl.ssh(vm, f"{ORCH} container rm -f {' '.join(check_names('runc'))} >/dev/null 2>&1; true", check=False)

    unit = "orch-crun"
    fl.ssh(vm, f"systemd-run --unit {unit} --collect {ORCH} daemon --runtime crun --data-dir {CRUN_DATA} "
               f"--socket {CRUN_SOCK} --listen-addr 127.0.0.1:4343 --cgroup-parent orch-crun "
               f"--network-prefix orchc- --insecure-registry {REG}")
    try:
        t0 = time.monotonic()
        wait_for("the crun engine's socket", lambda: fl.ssh(vm, f"test -S {CRUN_SOCK}", check=False,
                                                            timeout=30).returncode == 0, 180)
        print(f"[limits crun] engine-only daemon up {time.monotonic() - t0:.1f} s", flush=True)
        results["crun"] = limit_checks(fl, vm, f"{ORCH} --socket {CRUN_SOCK}", "crun", CRUN_DATA, "orch-crun")
    finally:
        fl.ssh(vm, f"{ORCH} --socket {CRUN_SOCK} container rm -f {' '.join(check_names('crun'))} >/dev/null 2>&1; "
                   f"systemctl stop {unit}; rm -rf {CRUN_DATA} /run/orch-crun; rmdir /sys/fs/cgroup/orch-crun; true",
               check=False)
    for rt, checks in results.items():
        print(f"[limits] {rt}: " + ", ".join(f"{k} {v if v == 'pass' else 'FAIL'}" for k, v in checks.items()),
              flush=True)
    failed = {f"{rt} {k}": v for rt, checks in results.items() for k, v in checks.items() if v != "pass"}
    assert not failed, failed


# -- a VM powered off ----------------------------------------------------------------


def test_power_off_a_vm(fleet: vmfleet.Fleet) -> None:
    """A worker VM running a replica of web has its qemu quit (no shutdown, nothing said on the
    network): its node goes DOWN and its replicas run again on the other VMs. Last: it stays off."""
    fl = fleet
    by_name = cluster(fl)
    web = running(fl, "web")
    assert len(web) == 3, web
    # Not vm1 (the only manager). Replicas are not rebalanced after the reboot: vm3's may have moved.
    on = {by_name[t["node_id"]] for t in web}
    victim = next((vm for vm in reversed(fl.vms[1:]) if vm.name in on), None)
    assert victim is not None, f"no web replica on a worker VM: {sorted(on)}"
    victim_id = next(i for i, h in by_name.items() if h == victim.name)
    fl.power_off(victim)
    t0 = time.monotonic()
    assert fl.ssh(victim, "true", timeout=30, check=False).returncode != 0, f"{victim.name} answers after power off"

    def down() -> bool | str:
        st = json.loads(orch(fl, fl.vms[0], "node", "inspect", victim_id, timeout=60))[0]["status"]["state"]
        return st == "down" or f"{victim.name} is {st}"

    wait_for(f"{victim.name}'s node DOWN", down, 300)
    t_down = time.monotonic() - t0
    left = sorted(vm.name for vm in fl.vms if vm is not victim)

    def moved() -> bool | str:
        hosts = sorted(by_name[t["node_id"]] for t in running(fl, "web"))
        return (len(hosts) == 3 and victim.name not in hosts) or f"web running on {hosts}"

    wait_for(f"web's 3 replicas running on {left}", moved, 300)
    print(f"[power off] {victim.name} DOWN {t_down:.1f} s after its qemu quit; web's 3 replicas on {left} "
          f"{time.monotonic() - t0:.1f} s after", flush=True)
    # The global service keeps one task on each node left, none wanted on the lost one.
    wait_for(f"mon's tasks on {left} only", lambda: sorted(
        by_name[t["node_id"]] for t in running(fl, "mon")) == left, 60)
