"""Service convergence: orch single-host cluster vs. Docker Swarm single node.

Both sides get the same one-layer busybox image from the same real
`docker-registry` on loopback (built and served by bench/container_start.py's
helpers) and are driven through their CLIs exactly as a user would:

(a) `service create --replicas N IMAGE sleep 3600` until all N run,
(b) `service scale b=0` until all are gone,
    then `service scale b=N` (untimed for the goals, shown for information),
(c) `service update --update-parallelism 10 --env V=2 b` (Swarm:
    `--env-add V=2`) until converged.

orch: one `orch daemon` (own data dir, socket, cgroup parent, loopback
listen address) made a single-node cluster with `orch init`; its CLI waits
for convergence by default. Swarm: a private dockerd from Debian's docker.io
(started by container_start.PrivateDockerd: own roots, no bridge, no
iptables), `docker swarm init` on loopback, the CLI with `--detach=false`.

Both sides use the same stop setting (`--stop-signal KILL` by default:
busybox `sleep` as PID 1 ignores SIGTERM) and the same update monitor
(`--update-monitor 1s` by default, set at create so Swarm's CLI also waits
that long, not 5 s, to "verify that tasks are stable"); update delay 0 and
stop-first order are both sides' defaults.

Nothing is taken on the CLI's word: while each command runs, `runc list` on
that side's runtime root is polled (the same observer for both) and the time
it first shows the wanted state is recorded (N running; 0 running; N running
all created after the update began). After each command the task lists
(`orch service ps --format json`, `docker service ps` + `docker inspect`),
the container lists and the containers' own config.json (for V=2) are
counted; any disagreement is printed.

Goal (from the issue): orch at least 3x faster than Swarm on (a) and (b),
judged on "converged and known": the later of the CLI returning and runc
showing the state, so neither a CLI that returns early (Swarm's scale to 0
returns while containers still run) nor one that returns late counts in its
favour. The CLI-only and runc-only ratios are printed beside it. With
--rounds K both sides run K times, alternating which goes first, and the
medians are compared.

Everything is removed at the end, also on failure or Ctrl-C: services,
containers, mounts, cgroup parents, the daemons, the registry, temp dirs,
and the docker_gwbridge link Swarm makes on the host (when it did not exist
before).

    python3 bench/service_converge.py                   # N = 100, orch and Swarm
    python3 bench/service_converge.py --replicas 20 --skip-swarm --json
    python3 bench/service_converge.py --rounds 3 --update-monitor 5s --stop grace
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import container_start as cs  # noqa: E402  (also puts the repository root on sys.path)
from container_start import DOCKER_CLI, DOCKERD, OrchDaemon, PrivateDockerd, Teardown, log  # noqa: E402

from tests.fixtures.cgroups import remove_cgroup_parent  # noqa: E402
from tests.fixtures.registry import REGISTRY_BIN, free_port  # noqa: E402

ROOT = cs.ROOT
SERVICE = "b"
CMD = ["sleep", "3600"]
GOAL_RATIO = 3.0
UPDATE_PARALLELISM = 10
CLI_TIMEOUT = 900.0  # seconds one CLI command may take before it is killed
CLEANUP_WAIT = 120.0  # seconds to wait for a removed service's containers to go
GWBRIDGE = "docker_gwbridge"
# --stop: the same flags on both sides. busybox `sleep` as PID 1 ignores SIGTERM, so with "default"
# every stop takes the whole 10 s grace period (how the issue's Swarm figure for (b) was seen).
STOP_FLAGS: dict[str, list[str]] = {
    "kill": ["--stop-signal", "KILL"],
    "grace": ["--stop-grace-period", "1s"],
    "default": [],
}


class Kind(Enum):
    """What the runc observer waits for."""

    RUNNING = "running"  # exactly `target` containers running
    GONE = "gone"  # none running
    REPLACED = "replaced"  # `target` running, every one created after the command began


@dataclass
class Step:
    """One timed CLI command and what was seen around it; times in seconds."""

    key: str
    label: str
    kind: Kind
    target: int
    argv: list[str] = field(default_factory=list)
    cli_s: float = float("nan")
    cli_rc: int | None = None
    cli_tail: str = ""
    observed_s: float = float("nan")  # runc first showed the wanted state
    record_s: float = float("nan")  # the orchestrator's own update_status started -> completed
    control_cpu_s: float = float("nan")  # CPU of the control plane process(es) during the command
    busy_before_pct: float = float("nan")  # machine CPU busy (% of all cores) in the second before: others' noise
    verify: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def done_s(self) -> float:
        """Converged and known: the CLI returned and runc showed the state (the later of the two)."""
        return max(self.cli_s, self.observed_s) if self.cli_s == self.cli_s and self.observed_s == self.observed_s \
            else float("nan")


@dataclass
class SideRun:
    engine: str
    replicas: int
    round: int = 0
    steps: dict[str, Step] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- helpers -------------------------------------------------------------------------------


_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_rfc3339(s: str) -> float:
    """RFC 3339 with up to nanoseconds (runc, docker) -> epoch seconds; nan when unparsable."""
    m = _TS.match(s.strip())
    if not m:
        return float("nan")
    base, frac, tz = m.groups()
    dt = datetime.fromisoformat(base + ("+00:00" if tz == "Z" else tz))
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


def free_udp_port(lo: int = 20000, hi: int = 40000) -> int:
    """A UDP port in Swarm's allowed data-path range that nobody holds now."""
    for _ in range(200):
        port = lo + int.from_bytes(os.urandom(2), "big") % (hi - lo)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free UDP port in {lo}-{hi}")


def cpu_busy_pct(window: float) -> float:
    """How busy the whole machine's CPUs were over `window` seconds (% of all cores), from /proc/stat.

    Taken while this side is idle, it is what everyone else on the machine is using. (The load
    average is no use here: it stays high long after containers' short-lived processes are gone.)"""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    t0, i0 = sample()
    time.sleep(window)
    t1, i1 = sample()
    return 100.0 * (1 - (i1 - i0) / (t1 - t0)) if t1 > t0 else float("nan")


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def runc_list_sync(root: Path, tries: int = 10) -> list[dict[str, Any]] | None:
    """The containers under one runc root; None when runc kept failing.

    `runc list` fails now and then while a container is being deleted under it, so a failure is
    retried, and never read as "no containers"."""
    if not root.is_dir():
        return []
    for _ in range(tries):
        out = subprocess.run(["runc", f"--root={root}", "list", "--format", "json"], capture_output=True, text=True)
        if out.returncode == 0:
            try:
                return json.loads(out.stdout or "null") or []
            except ValueError:
                pass
        time.sleep(0.05)
    return None


async def runc_list(root: Path) -> list[dict[str, Any]] | None:
    """The containers under one runc root; None when runc failed (root not there yet)."""
    if not root.is_dir():
        return []
    p = await asyncio.create_subprocess_exec("runc", f"--root={root}", "list", "--format", "json",
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await p.communicate()
    except asyncio.CancelledError:
        # Reap it before the loop closes (an orphaned transport complains at exit).
        if p.returncode is None:
            p.kill()
        await p.wait()
        raise
    if p.returncode != 0:
        return None
    try:
        return json.loads(out or b"null") or []
    except ValueError:
        return None


def reached(containers: list[dict[str, Any]], kind: Kind, target: int, since: float) -> bool:
    running = [c for c in containers if c.get("status") == "running"]
    if kind is Kind.GONE:
        return not running
    if len(running) != target:
        return False
    return kind is Kind.RUNNING or all(parse_rfc3339(c.get("created", "")) >= since for c in running)


def env_of(bundle: str) -> list[str]:
    """The process environment a container was created with (its OCI config.json)."""
    try:
        with open(Path(bundle) / "config.json") as f:
            return list(json.load(f).get("process", {}).get("env", []))
    except (OSError, ValueError):
        return []


def runc_counts(root: Path, env_marker: str | None = None) -> dict[str, int]:
    found = runc_list_sync(root)
    if found is None:
        return {"runc_list_failed": 1}
    running = [c for c in found if c.get("status") == "running"]
    out = {"runc_containers": len(found), "runc_running": len(running)}
    if env_marker:
        out[f"runc_running_with_{env_marker}"] = sum(1 for c in running if env_marker in env_of(c.get("bundle", "")))
    return out


def tail(path: Path, n: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


async def _timed(step: Step, env: dict[str, str], runc_root: Path, poll: float, logf: Path,
                 cpu: Callable[[], float]) -> None:
    """Run the step's CLI command while polling runc; fill in the step's times."""
    cpu0 = cpu()
    since = time.time()
    t0 = time.monotonic()
    seen = asyncio.Event()

    async def watch() -> None:
        while True:
            found = await runc_list(runc_root)
            if found is not None and reached(found, step.kind, step.target, since):
                step.observed_s = time.monotonic() - t0
                seen.set()
                return
            await asyncio.sleep(poll)

    watcher = asyncio.create_task(watch())
    with open(logf, "ab") as out:
        out.write(f"$ {' '.join(step.argv)}\n".encode())
        out.flush()
        proc = await asyncio.create_subprocess_exec(*step.argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=out, stderr=asyncio.subprocess.STDOUT)
        try:
            step.cli_rc = await asyncio.wait_for(proc.wait(), CLI_TIMEOUT)
        except asyncio.TimeoutError:
            step.problems.append(f"CLI did not return within {CLI_TIMEOUT:.0f} s: killed")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            step.cli_s = time.monotonic() - t0
            step.control_cpu_s = cpu() - cpu0
    if not seen.is_set():
        # The CLI returned between two polls: look once more right now. Only if runc does not show
        # the state at this moment did the CLI return early; then see how much later it does.
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        for _ in range(5):  # runc list fails now and then while a container is being deleted
            found = await runc_list(runc_root)
            if found is not None:
                break
            await asyncio.sleep(0.02)
        if found is not None and reached(found, step.kind, step.target, since):
            step.observed_s = time.monotonic() - t0
        else:
            watcher = asyncio.create_task(watch())
            try:
                await asyncio.wait_for(watcher, 60)
                step.problems.append(f"CLI returned at {step.cli_s:.2f}s but runc showed the state only at "
                                     f"{step.observed_s:.2f}s")
            except asyncio.TimeoutError:
                step.problems.append(f"runc never showed the wanted state ({step.kind.value}, {step.target}) "
                                     "within 60 s after the CLI returned")
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    if step.cli_rc not in (0, None):
        step.problems.append(f"CLI exited with {step.cli_rc}")
    step.cli_tail = tail(logf, 6)


# -- a side ------------------------------------------------------------------------------------


@dataclass
class Side:
    """What both engines share: the timed steps and their order; subclasses say how."""

    args: argparse.Namespace
    work: Path
    registry: str
    ref: str
    td: Teardown
    run: SideRun = field(init=False)

    engine = "?"

    def __post_init__(self) -> None:
        self.run = SideRun(self.engine, self.args.replicas)

    # -- what each engine supplies --

    def start(self) -> None:
        """Bring the engine up as a one-node cluster; push its cleanup onto self.td first."""
        raise NotImplementedError

    def cli_env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def runc_root(self) -> Path:
        raise NotImplementedError

    def control_cpu(self) -> float:
        """CPU seconds used so far by the engine's control plane."""
        raise NotImplementedError

    def create_argv(self, n: int) -> list[str]:
        raise NotImplementedError

    def scale_argv(self, n: int) -> list[str]:
        raise NotImplementedError

    def update_argv(self) -> list[str]:
        raise NotImplementedError

    def check(self, step: Step) -> None:
        """Count tasks, containers and runc state after the command; note disagreements in step.problems."""
        raise NotImplementedError

    # -- shared --

    def stop_flags(self) -> list[str]:
        return STOP_FLAGS[self.args.stop]

    def do(self, key: str, label: str, kind: Kind, target: int, argv: list[str]) -> Step:
        step = Step(key, label, kind, target, argv, busy_before_pct=cpu_busy_pct(1.0))
        self.run.steps[key] = step
        log(f"{self.engine}: {label}")
        asyncio.run(_timed(step, self.cli_env(), self.runc_root, self.args.poll, self.work / "cli.log",
                           self.control_cpu))
        self.check(step)
        shown = f"{step.cli_s:.2f}s (runc {step.observed_s:.2f}s)"
        log(f"{self.engine}: {label}: {shown}" + (f"; PROBLEMS: {'; '.join(step.problems)}" if step.problems else ""))
        if step.cli_rc != 0:
            log(f"{self.engine}: CLI output:\n{step.cli_tail}")
        return step

    def measure(self) -> SideRun:
        n = self.args.replicas
        self.start()
        time.sleep(2)  # let the just-made cluster settle before the clock starts
        self.do("create", f"(a) create --replicas {n}", Kind.RUNNING, n, self.create_argv(n))
        self.do("scale0", f"(b) scale {n} -> 0", Kind.GONE, 0, self.scale_argv(0))
        self.do("rescale", f"    scale 0 -> {n} (untimed)", Kind.RUNNING, n, self.scale_argv(n))
        self.do("update", f"(c) update --env V=2, parallelism {UPDATE_PARALLELISM}",
                Kind.REPLACED, n, self.update_argv())
        return self.run


# -- orch ----------------------------------------------------------------------------------------


@dataclass
class OrchSide(Side):
    engine = "orch"
    daemon: OrchDaemon | None = None
    port: int = 0

    @property
    def runc_root(self) -> Path:
        assert self.daemon is not None
        return self.daemon.data / "engine" / "runtime"

    def cli(self, *a: str) -> list[str]:
        assert self.daemon is not None
        return [sys.executable, "-m", "cli.main", "--socket", str(self.daemon.sock), *a]

    def orch(self, *a: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cli(*a), cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def control_cpu(self) -> float:
        return cs.cpu_seconds(self.daemon.proc.pid) if self.daemon and self.daemon.proc else float("nan")

    def start(self) -> None:
        self.port = free_port()
        addr = f"127.0.0.1:{self.port}"
        # OrchDaemon.start has no place for extra daemon flags; its launcher can be swapped, so a
        # shell `exec` appends them (the daemon keeps the pid OrchDaemon watches).
        launcher = ["/bin/sh", "-c", f'exec "$0" -m cli.main "$@" --listen-addr {addr} --hostname bench',
                    sys.executable]
        d = OrchDaemon(self.work, self.registry, f"orch-bench-svc-{uuid.uuid4().hex[:8]}", launcher=launcher)
        self.daemon = d
        self.td.push("remove the orch work dir", lambda: shutil.rmtree(self.work, ignore_errors=True))
        if self.args.keep_logs:
            self.td.push("keep orch logs", lambda: (cs.keep_log(d.log_path, self.args.keep_logs / "orch-daemon.log"),
                                                    cs.keep_log(self.work / "cli.log", self.args.keep_logs / "orch-cli.log")))
        self.td.push(f"remove cgroup parent {d.cgroup_parent}", lambda: remove_cgroup_parent(d.cgroup_parent))
        self.td.push("force-clean orch leftovers", d.force_cleanup)
        self.td.push("stop the orch daemon", d.stop)
        log("orch: starting the daemon")
        d.start()
        self.td.push("remove the orch service", self.remove_service)
        r = self.orch("init", "--advertise-addr", addr, "--listen-addr", addr, timeout=90)
        if r.returncode != 0:
            raise RuntimeError(f"orch init: {r.stderr.strip() or r.stdout.strip()}\n{d.log_tail()}")
        deadline = time.monotonic() + 30
        while True:
            r = self.orch("node", "ls", "--format", "json")
            if r.returncode == 0 and any(n["status"]["state"] == "ready" for n in json.loads(r.stdout)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"orch node not ready after init: {r.stdout.strip()} {r.stderr.strip()}")
            time.sleep(0.2)
        self.run.notes.append(f"orch daemon: single manager on {addr}, cgroup parent {d.cgroup_parent}")

    def remove_service(self) -> None:
        r = self.orch("service", "rm", SERVICE)
        if r.returncode != 0 and "not found" not in (r.stderr + r.stdout).lower():
            log(f"orch: service rm: {r.stderr.strip()[:200]}")
        # Until the engine removed every container (runc state, and the record whose removal
        # unmounts the rootfs), so the daemon is not stopped halfway through its cleanup.
        deadline = time.monotonic() + CLEANUP_WAIT
        while time.monotonic() < deadline:
            r = self.orch("container", "ls", "-a", "--format", "json")
            if runc_list_sync(self.runc_root) == [] and r.returncode == 0 and json.loads(r.stdout or "[]") == []:
                break
            time.sleep(0.5)

    def create_argv(self, n: int) -> list[str]:
        return self.cli("service", "create", "--name", SERVICE, "--replicas", str(n), *self.stop_flags(),
                        "--update-monitor", self.args.update_monitor, self.ref, *CMD)

    def scale_argv(self, n: int) -> list[str]:
        return self.cli("service", "scale", f"{SERVICE}={n}")

    def update_argv(self) -> list[str]:
        return self.cli("service", "update", "--update-parallelism", str(UPDATE_PARALLELISM),
                        "--update-monitor", self.args.update_monitor, "--env", "V=2", SERVICE)

    def check(self, step: Step) -> None:
        v = step.verify
        svc = json.loads(self.orch("service", "inspect", SERVICE).stdout or "[{}]")[0]
        tasks = json.loads(self.orch("service", "ps", SERVICE, "--format", "json").stdout or "[]")
        ver = svc.get("spec_version")
        live = [t for t in tasks if t["desired_state"] == "running"]
        v["spec_replicas"] = svc.get("spec", {}).get("replicas")
        v["tasks_desired_running"] = len(live)
        v["tasks_running_current_spec"] = sum(1 for t in live if t["status"]["state"] == "running"
                                              and t["spec_version"] == ver)
        v["tasks_listed"] = len(tasks)
        marker = "V=2" if step.kind is Kind.REPLACED else None
        if marker:
            v["tasks_running_with_V=2"] = sum(1 for t in live if t["status"]["state"] == "running"
                                              and "V=2" in t["spec"]["container"].get("env", []))
            us = svc.get("update_status") or {}
            v["update_state"] = us.get("state")
            if us.get("completed_at") and us.get("started_at"):
                step.record_s = us["completed_at"] - us["started_at"]
        v.update(runc_counts(self.runc_root, marker))
        expect_problems(step)


# -- Swarm ---------------------------------------------------------------------------------------


@dataclass
class SwarmSide(Side):
    engine = "swarm"
    dockerd: PrivateDockerd | None = None
    gwbridge_before: bool = True

    @property
    def runc_root(self) -> Path:
        assert self.dockerd is not None
        return self.dockerd.exec_root / "runtime-runc" / "moby"

    def cli(self, *a: str) -> list[str]:
        assert self.dockerd is not None
        return [DOCKER_CLI, "-H", f"unix://{self.dockerd.sock}", *a]

    def cli_env(self) -> dict[str, str]:
        assert self.dockerd is not None
        return self.dockerd.env()

    def docker(self, *a: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.dockerd is not None
        return self.dockerd.docker(*a, timeout=timeout)

    def control_cpu(self) -> float:
        d = self.dockerd
        if d is None or d.proc is None:
            return float("nan")
        return cs.cpu_seconds(d.proc.pid) + (cs.cpu_seconds(p) if (p := d.containerd_pid()) else 0.0)

    def start(self) -> None:
        d = PrivateDockerd(self.work, self.registry, f"orch-bench-svc-docker-{uuid.uuid4().hex[:8]}")
        self.dockerd = d
        self.gwbridge_before = link_exists(GWBRIDGE)
        self.td.push("remove the docker work dir", lambda: shutil.rmtree(self.work, ignore_errors=True))
        if self.args.keep_logs:
            self.td.push("keep docker logs", lambda: (cs.keep_log(d.log_path, self.args.keep_logs / "dockerd.log"),
                                                      cs.keep_log(self.work / "cli.log", self.args.keep_logs / "docker-cli.log")))
        self.td.push(f"remove cgroup parent {d.cgroup_parent}", lambda: remove_cgroup_parent(d.cgroup_parent))
        self.td.push(f"remove the {GWBRIDGE} link Swarm made", self.remove_gwbridge)
        self.td.push("force-clean docker leftovers", d.force_cleanup)
        self.td.push("stop dockerd", d.stop)
        log("swarm: starting a private dockerd")
        d.start()
        self.td.push("leave the swarm", self.leave)
        self.td.push("remove the swarm service", self.remove_service)
        port, data_port = free_port(), free_udp_port()
        # Loopback only: the control port on 127.0.0.1, and a data-path (VXLAN) port of our own so
        # the ingress network Swarm insists on creating cannot collide with anyone's 4789.
        r = self.docker("swarm", "init", "--advertise-addr", f"127.0.0.1:{port}", "--listen-addr",
                        f"127.0.0.1:{port}", "--data-path-port", str(data_port), timeout=90)
        if r.returncode != 0:
            raise RuntimeError(f"docker swarm init: {r.stderr.strip()}\n{d.log_tail()}")
        deadline = time.monotonic() + 30
        while self.docker("node", "ls", "--format", "{{.Status}}").stdout.strip() != "Ready":
            if time.monotonic() > deadline:
                raise RuntimeError("swarm node not Ready 30 s after init")
            time.sleep(0.2)
        version = self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        driver = self.docker("info", "--format", "{{.Driver}}").stdout.strip()
        nets = self.docker("network", "ls", "--format", "{{.Name}}/{{.Driver}}").stdout.split()
        self.run.notes.append(f"dockerd {version} ({driver}), swarm init on 127.0.0.1:{port}, data-path-port "
                              f"{data_port}; dockerd --bridge=none --iptables=false; networks: {', '.join(nets)}; "
                              "services use the default (no --network, no published ports)")

    def remove_service(self) -> None:
        if self.dockerd is None or self.dockerd.proc is None or self.dockerd.proc.poll() is not None:
            return
        self.docker("service", "rm", SERVICE)
        # Swarm removes the service's containers itself (running and the stopped ones it keeps as
        # task history); only what is still there after the wait is removed by force.
        deadline = time.monotonic() + CLEANUP_WAIT
        while self.docker("ps", "-aq").stdout.split() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.dockerd.remove_all()

    def leave(self) -> None:
        if self.dockerd is not None and self.dockerd.proc is not None and self.dockerd.proc.poll() is None:
            self.docker("swarm", "leave", "--force", timeout=60)

    def remove_gwbridge(self) -> None:
        if not self.gwbridge_before and link_exists(GWBRIDGE):
            subprocess.run(["ip", "link", "delete", GWBRIDGE], check=True, capture_output=True)
            self.run.notes.append(f"{GWBRIDGE} was left on the host by dockerd after it stopped: removed")

    def create_argv(self, n: int) -> list[str]:
        return self.cli("service", "create", "--name", SERVICE, "--replicas", str(n), *self.stop_flags(),
                        "--update-monitor", self.args.update_monitor, "--detach=false", self.ref, *CMD)

    def scale_argv(self, n: int) -> list[str]:
        return self.cli("service", "scale", f"{SERVICE}={n}", "--detach=false")

    def update_argv(self) -> list[str]:
        return self.cli("service", "update", "--update-parallelism", str(UPDATE_PARALLELISM),
                        "--update-monitor", self.args.update_monitor, "--env-add", "V=2", "--detach=false", SERVICE)

    def check(self, step: Step) -> None:
        v = step.verify
        svc = json.loads(self.docker("service", "inspect", SERVICE).stdout or "[{}]")[0]
        ids = self.docker("service", "ps", SERVICE, "--filter", "desired-state=running", "-q", "--no-trunc").stdout.split()
        tasks = json.loads(self.docker("inspect", "--type", "task", *ids).stdout or "[]") if ids else []
        v["spec_replicas"] = svc.get("Spec", {}).get("Mode", {}).get("Replicated", {}).get("Replicas")
        v["tasks_desired_running"] = len(tasks)
        running = [t for t in tasks if t.get("Status", {}).get("State") == "running"]
        # A task runs the current spec when its container spec matches the service's on what we set
        # (the service's copy also carries defaults the CLI filled in, such as StopGracePeriod).
        keys = ("Image", "Args", "Env", "StopSignal")
        want = svc.get("Spec", {}).get("TaskTemplate", {}).get("ContainerSpec") or {}
        v["tasks_running_current_spec"] = sum(
            1 for t in running
            if all((t.get("Spec", {}).get("ContainerSpec") or {}).get(k) == want.get(k) for k in keys))
        v["containers_running"] = len(self.docker("ps", "-q", "--filter",
                                                  f"label=com.docker.swarm.service.name={SERVICE}").stdout.split())
        marker = "V=2" if step.kind is Kind.REPLACED else None
        if marker:
            v["tasks_running_with_V=2"] = sum(1 for t in running
                                              if "V=2" in (t.get("Spec", {}).get("ContainerSpec", {}).get("Env") or []))
            us = svc.get("UpdateStatus") or {}
            v["update_state"] = us.get("State")
            if us.get("StartedAt") and us.get("CompletedAt"):
                step.record_s = parse_rfc3339(us["CompletedAt"]) - parse_rfc3339(us["StartedAt"])
        v.update(runc_counts(self.runc_root, marker))
        if step.key == "create" and self.dockerd is not None:
            # Every task's container pulls the image itself; concurrent pulls of one image wait on
            # containerd's content lock, which dockerd logs.
            log_text = self.dockerd.log_path.read_text(errors="replace")
            locked = [float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
                      for m in re.finditer(r"locked for ([0-9.]+)(ms|s)\b", log_text)]
            if locked:
                self.run.notes.append(f"(a): dockerd logged {len(locked)} pulls waiting on the image's content "
                                      f"lock, up to {max(locked):.1f} s (one pull per task, all at once)")
        expect_problems(step)


def expect_problems(step: Step) -> None:
    """Compare the independent counts with what the step should have left; note disagreements."""
    v = step.verify
    want_running = 0 if step.kind is Kind.GONE else step.target
    expect = {"tasks_desired_running": want_running, "runc_running": want_running}
    if step.kind is not Kind.GONE:
        expect["tasks_running_current_spec"] = want_running
    if "containers_running" in v:
        expect["containers_running"] = want_running
    if step.kind is Kind.REPLACED:
        expect["tasks_running_with_V=2"] = want_running
        expect["runc_running_with_V=2"] = want_running
        expect["update_state"] = "completed"
    for k, want in expect.items():
        if v.get(k) != want:
            step.problems.append(f"after the CLI returned: {k} = {v.get(k)!r}, expected {want!r}")


# -- report ----------------------------------------------------------------------------------------


ROWS: list[tuple[str, str, str]] = [
    # (step key, attribute, what the row measures)
    ("create", "done_s", "converged and known"),
    ("create", "cli_s", "CLI returned"),
    ("create", "observed_s", "runc: all running"),
    ("scale0", "done_s", "converged and known"),
    ("scale0", "cli_s", "CLI returned"),
    ("scale0", "observed_s", "runc: none running"),
    ("rescale", "done_s", "converged and known"),
    ("rescale", "cli_s", "CLI returned"),
    ("rescale", "observed_s", "runc: all running"),
    ("update", "done_s", "converged and known"),
    ("update", "cli_s", "CLI returned"),
    ("update", "observed_s", "runc: all replaced, running"),
    ("update", "record_s", "update_status start->complete"),
]
GOAL_STEPS = (("create", "(a) create until all run"), ("scale0", "(b) scale to 0 until all gone"))


def median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return float("nan")
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def figure(runs: list[SideRun], key: str, attr: str) -> float:
    """The median over rounds of one step's figure."""
    return median([getattr(r.steps[key], attr) for r in runs if key in r.steps])


def ratio(orch: list[SideRun], swarm: list[SideRun], key: str, attr: str) -> float:
    a, b = figure(orch, key, attr), figure(swarm, key, attr)
    return b / a if a == a and b == b and a > 0 else float("nan")


def goals(orch: list[SideRun], swarm: list[SideRun]) -> list[dict[str, Any]]:
    """(a) and (b): on "converged and known" (the CLI returned and runc agreed), medians over rounds."""
    out = []
    for key, what in GOAL_STEPS:
        clean = all(key in r.steps and not r.steps[key].problems for r in orch)
        r_done = ratio(orch, swarm, key, "done_s")
        met: bool | None = None if r_done != r_done else (clean and r_done >= GOAL_RATIO)
        out.append({"goal": f"{what}: orch >= {GOAL_RATIO:g}x faster than Swarm",
                    "orch_s": figure(orch, key, "done_s"), "swarm_s": figure(swarm, key, "done_s"),
                    "ratio": r_done, "ratio_cli": ratio(orch, swarm, key, "cli_s"),
                    "ratio_runc": ratio(orch, swarm, key, "observed_s"), "orch_without_problems": clean,
                    "met": met})
    return out


def fmt(v: float, spec: str = ".2f") -> str:
    return "-" if v != v else format(v, spec)


def print_report(args: argparse.Namespace, orch: list[SideRun], swarm: list[SideRun], swarm_note: str) -> None:
    stop = " ".join(STOP_FLAGS[args.stop]) or "no stop flags (SIGTERM, 10 s grace)"
    n = args.replicas
    print(f"\nservice convergence: {n} x busybox `{' '.join(CMD)}`, one node each, image from one local registry")
    print(f"both sides: {stop}; --update-monitor {args.update_monitor} (at create and on update); update "
          f"parallelism {UPDATE_PARALLELISM}, delay 0, stop-first (both defaults)")
    print(f"timing: 'CLI returned' = the user's command (orch waits by default, docker --detach=false); "
          f"'runc' = first `runc list` (every {args.poll:g} s) showing the state; 'converged and known' = the "
          "later of the two")
    if args.rounds > 1:
        print(f"{args.rounds} rounds, sides alternating which goes first; figures are medians")
    labels = {"create": f"(a) create --replicas {n}", "scale0": f"(b) scale {n} -> 0",
              "rescale": f"    scale 0 -> {n} (untimed)", "update": f"(c) update --env V=2, par. {UPDATE_PARALLELISM}"}
    w1 = max(len(x) for x in labels.values())
    w2 = max(len(r[2]) for r in ROWS)
    per_round = args.rounds > 1
    print(f"\n{'step':{w1}}  {'':{w2}}  {'orch s':>8}  {'swarm s':>8}  {'swarm/orch':>10}"
          + ("  per round (orch | swarm)" if per_round else ""))
    prev = ""
    for key, attr, what in ROWS:
        if not any(key in r.steps for r in orch):
            continue
        name = labels[key] if key != prev else ""
        prev = key
        line = (f"{name:{w1}}  {what:{w2}}  {fmt(figure(orch, key, attr)):>8}  {fmt(figure(swarm, key, attr)):>8}  "
                f"{fmt(ratio(orch, swarm, key, attr)):>10}")
        if per_round:
            vals = lambda runs: " ".join(fmt(getattr(r.steps[key], attr)) for r in runs if key in r.steps)
            line += f"  {vals(orch)} | {vals(swarm)}"
        print(line)
    print("\ncontrol-plane CPU seconds during each command (orch daemon | dockerd + containerd); "
          "machine CPU busy in the second before it (% of all cores: others' noise):")
    for key, label in labels.items():
        if any(key in r.steps for r in orch):
            print(f"  {label:{w1}}  cpu {fmt(figure(orch, key, 'control_cpu_s')):>6} | "
                  f"{fmt(figure(swarm, key, 'control_cpu_s')):>6}   busy {fmt(figure(orch, key, 'busy_before_pct'), '.0f'):>3}% | "
                  f"{fmt(figure(swarm, key, 'busy_before_pct'), '.0f'):>3}%")
    print()
    if not swarm:
        print(f"swarm: {swarm_note}")
    for runs in (orch, swarm):
        for r in runs:
            tag = f"{r.engine}" + (f" round {r.round + 1}" if per_round else "")
            for note in r.notes:
                print(f"{tag}: {note}")
            for st in r.steps.values():
                for p in st.problems:
                    print(f"{tag}: {labels[st.key].strip()}: PROBLEM: {p}")
    print("\ngoals (on 'converged and known'):")
    for g in goals(orch, swarm):
        met = "n/a" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        print(f"  {met:8} {g['goal']}: {fmt(g['orch_s'])} s vs {fmt(g['swarm_s'])} s = x{fmt(g['ratio'], '.1f')} "
              f"(CLI alone x{fmt(g['ratio_cli'], '.1f')}, runc alone x{fmt(g['ratio_runc'], '.1f')})"
              + ("" if g["orch_without_problems"] else "; orch had problems in this step"))


# -- leftovers ----------------------------------------------------------------------------------------


def leftovers(top: Path, cgroup_prefix: str, dockerd_pids: list[int]) -> list[str]:
    """What is still there after the teardown (mounts, processes, cgroups, files): should be nothing."""
    out = []
    mounts = [mp for mp, _ in cs.mount_points() if mp.startswith(str(top))]
    if mounts:
        out.append(f"{len(mounts)} mounts under {top}")
    procs = cs.pids_whose_cmdline_has(str(top))
    if procs:
        out.append(f"processes still running: {[' '.join(cs.cmdline(p))[:80] for p in procs]}")
    alive = [p for p in dockerd_pids if os.path.exists(f"/proc/{p}")]
    if alive:
        out.append(f"dockerd still running: {alive}")
    cg = Path("/sys/fs/cgroup")
    out += [str(c) for d in [cg, *(x for x in cg.iterdir() if x.is_dir())] for c in d.glob(f"{cgroup_prefix}*")]
    if os.path.exists(top):
        out.append(f"{top} still exists")
    return out


# -- main --------------------------------------------------------------------------------------------


def side_json(r: SideRun) -> dict[str, Any]:
    d = asdict(r)
    for key, st in d["steps"].items():
        st["kind"] = st["kind"].value
        st["done_s"] = r.steps[key].done_s
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=100, help="tasks per service (default 100)")
    ap.add_argument("--skip-swarm", action="store_true", help="measure orch only")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat both sides this many times, alternating which goes first; medians are shown "
                         "(default 1)")
    ap.add_argument("--update-monitor", default="1s",
                    help="--update-monitor for both sides, set at create and on update (default 1s; Swarm's own "
                         "default is 5s)")
    ap.add_argument("--stop", choices=list(STOP_FLAGS), default="kill",
                    help="kill: --stop-signal KILL (default); grace: --stop-grace-period 1s; default: neither "
                         "(SIGTERM, 10 s grace, which `sleep` ignores); the same on both sides")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between runc observations (default 0.25)")
    ap.add_argument("--keep-logs", type=Path, default=None, help="copy daemon and CLI logs into this directory")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.replicas < 1 or args.rounds < 1:
        ap.error("--replicas and --rounds must be at least 1")
    if not re.fullmatch(r"\d+(\.\d+)?(ms|s|m)", args.update_monitor):
        ap.error(f"--update-monitor {args.update_monitor!r}: expected a duration such as 1s, 500ms, 5s")
    if os.geteuid() != 0:
        ap.error("needs root (containers, mounts, cgroups)")
    for binary in (REGISTRY_BIN, "/usr/bin/conmon", "/usr/sbin/runc"):
        if not os.path.exists(binary):
            ap.error(f"{binary} is missing (Debian packages docker-registry, conmon, runc)")
    swarm_note = ""
    if args.skip_swarm:
        swarm_note = "skipped (--skip-swarm)"
    elif not (os.path.exists(DOCKERD) and os.path.exists(DOCKER_CLI)):
        swarm_note = f"{DOCKERD} or {DOCKER_CLI} is not installed (Debian package docker.io)"

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    td_main = Teardown()
    td_sides: list[Teardown] = []  # one per side and round, each run as soon as that side is done
    top = Path(tempfile.mkdtemp(prefix="orch-bench-svc-"))
    td_main.push(f"remove {top}", lambda: shutil.rmtree(top, ignore_errors=True))
    orch: list[SideRun] = []
    swarm: list[SideRun] = []
    swarm_sides: list[SwarmSide] = []
    rc = 0
    try:
        log(f"building the image and starting the registry in {top}")
        reg, ref = cs.start_registry(top, td_main)
        for rnd in range(args.rounds):
            order: list[type[Side]] = [OrchSide] + ([] if swarm_note else [SwarmSide])
            if rnd % 2:
                order.reverse()
            for cls in order:
                td = Teardown()
                td_sides.append(td)
                side = cls(args, top / f"{cls.engine[0]}{rnd}", reg.addr, ref, td)
                side.run.round = rnd
                (orch if cls is OrchSide else swarm).append(side.run)
                if isinstance(side, SwarmSide):
                    swarm_sides.append(side)
                if args.rounds > 1:
                    log(f"round {rnd + 1}/{args.rounds}: {cls.engine}")
                try:
                    side.measure()
                finally:
                    log(f"{cls.engine}: cleaning up")
                    td.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        swarm_note = swarm_note or "interrupted"
        rc = 130
    except Exception as e:
        log(f"failed: {type(e).__name__}: {e}")
        swarm_note = swarm_note or f"failed: {type(e).__name__}: {e}"
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave things behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        for td in [*reversed(td_sides), td_main]:
            td.run()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    problems = [p for td in [*td_sides, td_main] for p in td.problems]
    dockerd_pids = [s.dockerd.proc.pid for s in swarm_sides if s.dockerd and s.dockerd.proc]
    left = leftovers(top, "orch-bench-svc-", dockerd_pids)
    if any(not s.gwbridge_before for s in swarm_sides) and link_exists(GWBRIDGE):
        left.append(f"{GWBRIDGE} link still exists")
    if problems or left:
        log("left behind: " + "; ".join(problems + left))
        rc = rc or 1
    else:
        log("cleanup check: no mounts, processes, cgroups, links or files of this run left")
    orch = [r for r in orch if r.steps]
    swarm = [r for r in swarm if r.steps]
    if not orch:
        return rc or 1
    if args.json:
        out = {"replicas": args.replicas, "rounds": args.rounds, "image": cs.IMAGE_REPO, "command": CMD,
               "stop": " ".join(STOP_FLAGS[args.stop]) or "default (SIGTERM, 10 s grace)",
               "update_monitor": args.update_monitor, "update_parallelism": UPDATE_PARALLELISM,
               "orch": [side_json(r) for r in orch], "swarm": [side_json(r) for r in swarm],
               "swarm_note": swarm_note,
               "medians": {f"{k}.{a}": {"orch": figure(orch, k, a), "swarm": figure(swarm, k, a),
                                        "ratio_swarm_over_orch": ratio(orch, swarm, k, a)} for k, a, _ in ROWS},
               "goals": goals(orch, swarm), "cleanup_problems": problems + left}
        print(json.dumps(cs._clean_json(out), indent=2))
    else:
        print_report(args, orch, swarm, swarm_note)
    return rc


if __name__ == "__main__":
    sys.exit(main())
