"""`orch fleet up`, `orch system install/uninstall` and restarts on container
hosts (tests/harness/chosts.py): privileged containers with systemd as PID
1, from the VM fleet's Debian root filesystem, on a dockerd and a Docker
network of the run's own. The fast backend: the same flow on separate
kernels is tests/vm.

The tests of this module run in order on one fleet of four hosts: bad input
first (fresh hosts), then `fleet up` on three and a second run adding the
fourth, an idempotent `system install`, a daemon restart and a host
restart with tasks coming back, and `system uninstall --purge` last.
Figures are printed (run with -s): fleet up per host and step, the fourth
host's addition, restart recovery.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import chosts

pytestmark = [pytest.mark.chosts, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
ORCH = "/opt/orch/bin/orch"


def _forward_policy() -> str:
    out = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else ""


def _docker_rules(fl: chosts.Fleet) -> list[str]:
    """Lines of the machine's nftables ruleset (iptables-nft's too) that a dockerd managing the firewall
    would have written: its chains, or anything naming the run's bridge or subnet. (The ruleset is not
    compared whole: other test runs on the machine add and remove their own tables meanwhile.)"""
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    return [ln.strip() for ln in rules.splitlines()
            if "DOCKER" in ln or "docker" in ln or (fl.bridge and fl.bridge in ln) or f"{fl.subnet}." in ln]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chosts.Fleet]:
    from tests.vm.registry import seed_storage

    policy = _forward_policy()
    t0 = time.monotonic()
    fl = chosts.up(4, log=lambda m: print(f"[chosts] {m}", flush=True))
    print(f"[chosts] 4 container hosts up {time.monotonic() - t0:.1f} s after up()", flush=True)
    reg = None
    try:
        # A running dockerd that managed the firewall would have set FORWARD to DROP and added its chains.
        assert (_forward_policy(), _docker_rules(fl)) == (policy, [])
        work = tmp_path_factory.mktemp("chreg")
        reg = chosts.serve_registry(fl.gateway, seed_storage(work), work)
        yield fl
    finally:
        if reg is not None:
            reg.kill()
            reg.wait()
        chosts.down(fl)
    # Nothing of the run is left, and the machine's firewall is as it was (dockerd ran with --iptables=false).
    assert not os.path.exists(fl.dockerd.data_root) and not os.path.exists(fl.dockerd.exec_root)
    assert not os.path.exists(f"/sys/class/net/{fl.bridge}")
    assert not chosts._mounts_under(str(fl.dockerd.data_root))
    assert not chosts._cgroups(fl.dockerd.cgroup_parent)
    assert (_forward_policy(), _docker_rules(fl)) == (policy, [])


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    subprocess.run(["make", "-s", "dist", f"DIST={d}"], cwd=REPO, check=True, capture_output=True, timeout=600)
    print(f"[dist] make dist {time.monotonic() - t0:.1f} s", flush=True)
    return d / "wheels"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fleet: chosts.Fleet) -> Path:
    p = tmp_path_factory.mktemp("chcfg") / "daemon.yaml"
    p.write_text(f"insecure-registry: [{fleet.gateway}:{chosts.REGISTRY_PORT}]\nheartbeat-period: 2\n")
    return p


def image(fl: chosts.Fleet) -> str:
    return f"{fl.gateway}:{chosts.REGISTRY_PORT}/library/busybox-multi:latest"


def fleet_up(fl: chosts.Fleet, wheels: Path, config: Path, *hosts: str,
             key: str | None = None) -> subprocess.CompletedProcess[str]:
    opts = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"]
    argv = [sys.executable, "-m", "cli.main", "fleet", "up", "--dist", str(wheels), "--config", str(config),
            "-i", key or fl.key, *[a for o in opts for a in ("-o", o)], *hosts]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def orch(fl: chosts.Fleet, h: chosts.Host, *args: str, timeout: float = 300) -> str:
    return fl.ssh(h, " ".join([ORCH, *map(shlex.quote, args)]), timeout=timeout).stdout


def wait_for(what: str, check: Callable[[], object], timeout: float) -> float:
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < timeout:
        try:
            last = check()
            if last is True:
                return time.monotonic() - t0
        except Exception as e:  # noqa: BLE001  (the host may be restarting)
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {last})")


def nothing_of_orch(fl: chosts.Fleet, h: chosts.Host) -> list[str]:
    """What of orch is on host `h` (empty: nothing)."""
    script = r"""
for p in /opt/orch /etc/orch /etc/systemd/system/orch.service /var/lib/orch /run/orch /var/tmp/orch-dist; do
  test -e $p && echo "file $p"
done
grep -E ' /var/lib/orch| /run/orch' /proc/self/mountinfo | awk '{print "mount " $5}'
for d in /sys/fs/cgroup/*/orch /sys/fs/cgroup/orch; do test -d $d && echo "cgroup $d"; done
ip -o link show | grep -o 'alias orch[^ ]*' | sed 's/^/link /'
ls /run/netns 2>/dev/null | sed 's/^/netns /'
nft list tables 2>/dev/null | grep -i orch | sed 's/^/nft /'
systemctl list-unit-files orch.service --no-legend 2>/dev/null | sed 's/^/unit /'
pgrep -a -f '^/opt/orch/' | sed 's/^/process /'
pgrep -a -x conmon | sed 's/^/process /'
exit 0
"""
    return fl.ssh(h, script).stdout.split("\n")[:-1]


# -- the tests, in order -------------------------------------------------------------


def test_bad_input_is_named_with_its_step_and_nothing_is_half_installed(
        fleet: chosts.Fleet, wheels: Path, config: Path, tmp_path: Path) -> None:
    fl = fleet
    h1, _, _, h4 = fl.hosts
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    absent = f"root@{fl.subnet}.99"  # on the run's network, no host there

    r = fleet_up(fl, wheels, config, h1.target, absent, key=str(wrong))
    assert r.returncode == 1, r.stdout + r.stderr
    for t in (h1.target, absent):
        assert f"[{t}] FAILED at connect: cannot connect (is it up, and is the SSH key right?)" in r.stdout, \
            r.stdout
    assert "No manager: nothing could join." in r.stdout
    assert nothing_of_orch(fl, h1) == []

    # A host without a package orch needs: named, and refused before anything is copied.
    fl.ssh(h4, "mv /usr/bin/conmon /usr/bin/conmon.away")
    try:
        r = fleet_up(fl, wheels, config, h4.target)
    finally:
        fl.ssh(h4, "mv /usr/bin/conmon.away /usr/bin/conmon")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"[{h4.target}] FAILED at packages: the host lacks Debian packages orch needs: conmon" in r.stdout
    assert "nothing was installed" in r.stdout
    assert nothing_of_orch(fl, h4) == []

    # A daemon that does not start (a drop-in of the machine's makes it exit): named with its step, and
    # what was copied and installed on the fresh host is rolled back.
    dropin = "/etc/systemd/system/orch.service.d"
    fl.ssh(h4, f"mkdir -p {dropin} && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\nRestart=no\\n' "
               f"> {dropin}/broken.conf")
    try:
        r = fleet_up(fl, wheels, config, h4.target)
    finally:
        fl.ssh(h4, f"rm -rf {dropin} && systemctl daemon-reload && systemctl reset-failed")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"[{h4.target}] FAILED at system install: error: system install: wait for the daemon: the service is " \
           "failed" in " ".join(r.stdout.split()), r.stdout
    assert f"[{h4.target}] rolled back: nothing of orch is left on it" in r.stdout, r.stdout
    assert nothing_of_orch(fl, h4) == []


def test_fleet_up_three_hosts_then_a_fourth(fleet: chosts.Fleet, wheels: Path, config: Path) -> None:
    fl = fleet
    h1, h2, h3, h4 = fl.hosts
    t0 = time.monotonic()
    r = fleet_up(fl, wheels, config, h1.target, h2.target, h3.target)
    print(f"[fleet up 3 container hosts] {time.monotonic() - t0:.1f} s\n{r.stdout}", flush=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # fleet up returns once the nodes it joined are READY (a join returns
    # before the agent's first session): the node table it printed says so.
    table = r.stdout[r.stdout.rindex("HOSTNAME"):].splitlines()
    for h in ("host1", "host2", "host3"):
        row = next(line for line in table if f" {h} " in line)
        assert "Ready" in row, table

    # The second run adds host4 and leaves the others alone (their daemons are not restarted).
    pids = {h.name: fl.ssh(h, "systemctl show -p MainPID --value orch").stdout.strip() for h in (h1, h2, h3)}
    t0 = time.monotonic()
    r = fleet_up(fl, wheels, config, h1.target, h2.target, h3.target, h4.target)
    print(f"[fleet up + host4] {time.monotonic() - t0:.1f} s\n{r.stdout}", flush=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[{h1.target}] already a manager of the cluster: left as it is" in r.stdout
    for h in (h2, h3):
        assert f"[{h.target}] already a worker of the cluster: left as it is" in r.stdout
        assert f"[{h.target}] copy" not in r.stdout
    assert f"[{h4.target}] join done" in r.stdout
    assert {h.name: fl.ssh(h, "systemctl show -p MainPID --value orch").stdout.strip()
            for h in (h1, h2, h3)} == pids

    nodes = json.loads(orch(fl, h1, "node", "ls", "--format", "json"))
    assert sorted((n["description"]["hostname"], n["role"], n["status"]["state"]) for n in nodes) == [
        ("host1", "manager", "ready"), ("host2", "worker", "ready"), ("host3", "worker", "ready"),
        ("host4", "worker", "ready")]
    for h in fl.hosts:
        # A real systemd runs it: enabled, active, PID 1 is systemd and the daemon is its child.
        assert fl.ssh(h, "systemctl is-enabled orch; systemctl is-active orch; cat /proc/1/comm").stdout.split() \
            == ["enabled", "active", "systemd"]


def test_system_install_again_changes_nothing(fleet: chosts.Fleet) -> None:
    fl = fleet
    h2 = fl.hosts[1]
    before = fl.ssh(h2, "systemctl show -p MainPID --value orch; stat -c %Y /etc/systemd/system/orch.service "
                        "/etc/orch/daemon.yaml").stdout
    out = orch(fl, h2, "system", "install")
    assert out.strip().endswith("Nothing to change."), out
    assert not [ln for ln in out.splitlines() if ln.strip().startswith("changed")], out
    out = orch(fl, h2, "system", "install")
    assert out.strip().endswith("Nothing to change."), out
    assert fl.ssh(h2, "systemctl show -p MainPID --value orch; stat -c %Y /etc/systemd/system/orch.service "
                      "/etc/orch/daemon.yaml").stdout == before


def _running(fl: chosts.Fleet, service: str) -> list[dict[str, Any]]:
    ts = json.loads(orch(fl, fl.hosts[0], "service", "ps", service, "--format", "json"))
    return [t for t in ts if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def test_daemon_restart_and_host_restart_come_back(fleet: chosts.Fleet) -> None:
    fl = fleet
    h1, h2, h3, _ = fl.hosts
    img = image(fl)
    orch(fl, h1, "service", "create", "--name", "web", "--replicas", "4", img, "sleep", "3600", timeout=600)
    orch(fl, h1, "service", "create", "--name", "mon", "--mode", "global", img, "sleep", "3600", timeout=600)
    nodes = json.loads(orch(fl, h1, "node", "ls", "--format", "json"))
    by_name = {n["description"]["hostname"]: n["id"] for n in nodes}
    wait_for("mon on all 4 nodes", lambda: {t["node_id"] for t in _running(fl, "mon")} == set(by_name.values()),
             120)
    wait_for("web: 4 running", lambda: len(_running(fl, "web")) == 4, 120)

    def on(h: chosts.Host) -> int:
        return sum(t["node_id"] == by_name[h.name] for s in ("web", "mon") for t in _running(fl, s))

    def back(h: chosts.Host) -> Callable[[], bool | str]:
        def check() -> bool | str:
            n = json.loads(orch(fl, h1, "node", "inspect", by_name[h.name]))[0]
            if n["status"]["state"] != "ready":
                return f"{h.name} is {n['status']['state']}"
            mine = [t for t in _running(fl, "mon") if t["node_id"] == by_name[h.name]]
            if not mine:
                return f"no mon task running on {h.name}"
            if fl.ssh(h, "pgrep -x sleep", check=False).returncode != 0:
                return f"no task process on {h.name}"
            return True
        return check

    # systemctl restart orch on a worker: the daemon comes back, adopts its containers (KillMode=process).
    sleeps = fl.ssh(h2, "pgrep -x sleep | sort").stdout.split()
    assert sleeps
    old = fl.ssh(h2, "systemctl show -p MainPID --value orch").stdout.strip()
    t0 = time.monotonic()
    fl.ssh(h2, "systemctl restart orch")
    wait_for("host2's daemon answers again", lambda: orch(fl, h2, "system", "status").find("running,") >= 0, 120)
    t_daemon = time.monotonic() - t0
    t_ready = wait_for("host2 READY with its tasks", back(h2), 120) + t_daemon
    assert fl.ssh(h2, "systemctl show -p MainPID --value orch").stdout.strip() != old
    # The same processes, not restarted; and no process the cluster does not know of.
    assert set(sleeps) <= set(fl.ssh(h2, "pgrep -x sleep").stdout.split())

    def as_many_as_tasks() -> bool | str:
        n, procs = on(h2), fl.ssh(h2, "pgrep -x sleep").stdout.split()
        return len(procs) == n or f"{len(procs)} processes, {n} running tasks"
    wait_for("host2: a process per task", as_many_as_tasks, 60)
    print(f"[restart] systemctl restart orch on host2: daemon answering {t_daemon:.1f} s, node READY with its "
          f"tasks {t_ready:.1f} s", flush=True)

    # A restart of host3 (docker stop + start): systemd boots again, orch starts, the node is READY and runs its task again.
    boot = fl.ssh(h3, "systemctl show -p ActiveEnterTimestampMonotonic --value init.scope; "
                      "cat /proc/1/stat | cut -d' ' -f22").stdout
    t0 = time.monotonic()
    stop_s, code = fl.restart(h3)
    t_up = fl.wait_up(h3)
    assert fl.ssh(h3, "systemctl show -p ActiveEnterTimestampMonotonic --value init.scope; "
                      "cat /proc/1/stat | cut -d' ' -f22").stdout != boot
    # The shutdown stopped the containers (the unit's ExecStopPost): `sleep` as a container's PID 1
    # ignores SIGTERM, and would otherwise hold systemd's final kill until docker's timeout (30 s).
    assert code != 137 and stop_s < 25, (stop_s, code)
    wait_for("host3 READY with its global task", back(h3), 180)
    t_ready = time.monotonic() - t0 - stop_s
    assert fl.ssh(h3, "systemctl is-active orch").stdout.strip() == "active"
    print(f"[restart] docker stop+start host3: stop {stop_s:.1f} s (exit {code}"
          f"{': killed at the timeout' if code == 137 else ''}), then systemd up {t_up:.1f} s, node READY with its "
          f"task {t_ready:.1f} s after the start", flush=True)
    wait_for("web: 4 running", lambda: len(_running(fl, "web")) == 4, 120)


def test_uninstall_purge_leaves_nothing(fleet: chosts.Fleet) -> None:
    fl = fleet
    h4 = fl.hosts[3]
    # It has something to remove: its global task's container, mounts, cgroups.
    have = fl.ssh(h4, "grep -c ' /var/lib/orch' /proc/self/mountinfo; ls -d /sys/fs/cgroup/*/orch | wc -l; "
                      "pgrep -c conmon").stdout.split()
    assert all(int(x) > 0 for x in have), have
    out = orch(fl, h4, "system", "uninstall", "--purge", timeout=300)
    # What is left is what `orch fleet up` put there around orch: its venv (this orch) and the wheelhouse.
    assert nothing_of_orch(fl, h4) == ["file /opt/orch", "file /var/tmp/orch-dist"], out
    # Again: nothing to do, nothing fails.
    out = orch(fl, h4, "system", "uninstall", "--purge", timeout=300)
    assert not [ln for ln in out.splitlines() if ln.strip().startswith("changed")], out
    # `orch fleet down` removes those too (after the same purge).
    r = subprocess.run([sys.executable, "-m", "cli.main", "fleet", "down", "-i", fl.key, "-o", "StrictHostKeyChecking=no",
                        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", h4.target],
                       capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and f"[{h4.target}] uninstall done" in r.stdout, r.stdout + r.stderr
    assert nothing_of_orch(fl, h4) == []
