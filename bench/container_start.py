"""Container start: 100 busybox `sleep` containers through orch's engine vs. docker.

One real `docker-registry` on loopback serves a busybox image built here
(tests/fixtures/oci_build.py, pushed with the registry fixture's code), and
both engines pull that same image from it.

orch: a real engine-only `orch daemon` (own data dir, socket, cgroup
parent). After the pull and a few seconds idle its RSS is the agent's idle
RSS; then N create+start requests (`sleep 3600`, detached) go to the local
API at once, as the agent's worker would issue them for N tasks. Each
request's latency, the wall time until all answered and `GET /v1/containers`
shows them running, and where the time went (from the records' created /
started timestamps) are recorded; then the mean RSS and PSS of the
containers' conmon processes (the per-container monitor) and the agent's RSS
after the run and at its peak.

the runtime's limit: the same N containers as plain `runc run -d` of one
OCI bundle (the busybox layer unpacked once, read-only, shared; each
container its own cgroup), as many at a time as orch's requests, straight
from this process: no image store, overlay mount, monitor or API. orch's
share of that rate is the issue's goal (>= 0.8).

docker: a private dockerd from Debian's docker.io (own data root, exec root,
socket, pid file, config file, trust key, cgroup parent; no bridge, no
iptables), the image pulled untimed, then N sequential
`docker run -d --network none IMAGE sleep 3600` as a user would type them;
per-run latency, total time, mean RSS / PSS of the containerd shims, and
dockerd + containerd RSS.

Goals (from the issues): all N running in at most 1/3 of docker's time;
orch's start rate at least 0.8 of the runtime's limit;
monitor at most 2 MB RSS per container; agent idle RSS at most 60 MB.

Everything the run made (containers, mounts, cgroups, registry, daemons,
temp dirs, and the files dockerd insists on creating outside its roots) is
removed at the end, also on failure or Ctrl-C.

    python3 bench/container_start.py                 # N = 100, orch and docker
    python3 bench/container_start.py --count 20 --skip-docker --json
    python3 bench/container_start.py --skip-docker --concurrency 8   # bounded, to compare
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from agent.images.rootfs import mount_points  # noqa: E402
from tests.fixtures.cgroups import remove_cgroup_parent  # noqa: E402
from tests.fixtures.oci_build import BUSYBOX, BUSYBOX_APPLETS, TarBuilder, build_image, make_layer  # noqa: E402
from tests.fixtures.registry import REGISTRY_BIN, RegistryProcess  # noqa: E402

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/bin/docker"  # Debian's client, the same release as dockerd
IMAGE_REPO = "bench/busybox"
IMAGE_CONFIG: dict[str, Any] = {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}
CMD = ["sleep", "3600"]
# Issue goals.
GOAL_RATIO = 3.0
GOAL_OF_LIMIT = 0.8  # orch's start rate at least this share of plain `runc run -d`'s
GOAL_MONITOR_MB = 2.0
GOAL_AGENT_IDLE_MB = 60.0
# Paths a dockerd 20.10 creates outside --data-root/--exec-root; removed after
# the run when they did not exist before it (deepest first).
DOCKERD_OUTSIDE = ("/run/docker/plugins", "/run/docker")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- /proc -----------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def pids_whose_cmdline_has(needle: str, argv0_suffix: str = "") -> list[int]:
    """Processes whose command line mentions `needle` (our own temp paths only)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        argv = cmdline(int(d))
        if argv and argv[0].endswith(argv0_suffix) and any(needle in a for a in argv):
            out.append(int(d))
    return out


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def unmount_under(prefix: Path) -> list[str]:
    """Lazily unmount everything mounted at or below `prefix`, deepest first."""
    p = str(prefix)
    targets = sorted({mp for mp, _ in mount_points() if mp == p or mp.startswith(p + "/")},
                     key=lambda m: m.count("/"), reverse=True)
    for mp in targets:
        subprocess.run(["umount", "-l", mp], capture_output=True)
    return targets


# -- figures -------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


@dataclass
class SideResult:
    """One engine's figures; times in seconds, memory in MB."""

    engine: str
    count: int
    concurrency: int = 1  # requests in flight at once
    started: int = 0
    running: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    total_s: float = float("nan")
    p50_s: float = float("nan")
    p99_s: float = float("nan")
    max_s: float = float("nan")
    per_s: float = float("nan")
    monitor: str = ""
    monitor_count: int = 0
    monitor_rss_mb: float = float("nan")
    monitor_pss_mb: float = float("nan")
    monitor_rss_max_mb: float = float("nan")
    agent: str = ""
    agent_idle_rss_mb: float = float("nan")
    agent_after_rss_mb: float = float("nan")
    agent_peak_rss_mb: float = float("nan")
    agent_cpu_s: float = float("nan")
    agent_cpu_running_pct: float = float("nan")  # share of one core while the N containers just run
    load_before: float = float("nan")  # 1-minute load average before the starts: others' noise
    pull_s: float = float("nan")
    remove_s: float = float("nan")
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set_latencies(self, lat: list[float], total: float) -> None:
        self.total_s = total
        self.p50_s, self.p99_s = pct(lat, 50), pct(lat, 99)
        self.max_s = max(lat) if lat else float("nan")
        self.per_s = self.started / total if total > 0 else float("nan")

    def set_monitors(self, pids: list[int]) -> None:
        rss = [status_kb(p, "VmRSS") / 1024 for p in pids]
        pss = [v / 1024 for p in pids if (v := pss_kb(p)) is not None]
        self.monitor_count = len(pids)
        self.monitor_rss_mb = mean(rss)
        self.monitor_rss_max_mb = max(rss) if rss else float("nan")
        self.monitor_pss_mb = mean(pss)


PHASES = {
    "to_created": "request sent -> record created",
    "created_to_started": "created -> started (conmon, runc)",
    "started_to_answer": "started -> answer received",
}


def phase_stats(xs: list[float]) -> dict[str, float]:
    return {"mean": mean(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs) if xs else float("nan")}


# -- teardown ---------------------------------------------------------------------------


@dataclass
class Teardown:
    """Cleanup steps run last-in first-out; one failing step does not stop the others."""

    steps: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.steps.append((what, fn))

    def run(self) -> None:
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except Exception as e:  # keep cleaning up; say what was left
                self.problems.append(f"{what}: {type(e).__name__}: {e}")
                log(f"cleanup step failed: {what}: {e}")


def keep_log(src: Path, dest: Path) -> None:
    if src.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)


# -- the image ----------------------------------------------------------------------------


def busybox_layer() -> TarBuilder:
    """One layer like the busybox image: the host's static busybox and its applet links.

    Not the fixture's busybox-multi: its `bin/busybox-hardlink` member carries
    mode 0644, which docker applies to the shared inode, leaving /bin/busybox
    not executable there."""
    tb = TarBuilder()
    for d, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)):
        tb.dir(d, mode=mode)
    tb.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
    for applet in BUSYBOX_APPLETS:
        tb.symlink(f"bin/{applet}", "busybox")
    tb.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    tb.file("etc/group", "root:x:0:\n")
    return tb


def start_registry(work: Path, td: Teardown) -> tuple[RegistryProcess, str]:
    """A real registry on loopback holding the busybox image; returns (registry, image ref)."""
    reg = RegistryProcess(work / "registry", work / "registry" / "storage")
    td.push("stop the registry", reg.stop)
    reg.start()
    image = build_image([make_layer(busybox_layer(), "gzip", docker=True)], IMAGE_CONFIG, docker=True)
    reg.pusher().push_image(IMAGE_REPO, "latest", image)
    return reg, f"{reg.addr}/{IMAGE_REPO}:latest"


# -- orch ------------------------------------------------------------------------------------


@dataclass
class OrchDaemon:
    work: Path
    registry: str
    cgroup_parent: str
    # How the daemon is launched; a diagnosis can swap in its own wrapper.
    launcher: list[str] = field(default_factory=lambda: [sys.executable, "-m", "cli.main"])
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.work / "orch.sock"

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def log_path(self) -> Path:
        return self.work / "daemon.log"

    def start(self) -> None:
        argv = [*self.launcher, "daemon", "--data-dir", str(self.data), "--socket", str(self.sock),
                "--insecure-registry", self.registry, "--cgroup-parent", self.cgroup_parent]
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"orch daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"orch daemon socket did not appear:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def conmon_pid(self, cid: str) -> int:
        try:
            return int((self.data / "engine" / "containers" / cid / "conmon.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def force_cleanup(self) -> None:
        """What the API did not remove (daemon died, Ctrl-C mid-burst): conmons, runc state, mounts."""
        conmons = pids_whose_cmdline_has(str(self.data), "conmon")
        kill_pids(conmons)
        runtime_root = self.data / "engine" / "runtime"
        if runtime_root.is_dir():
            out = subprocess.run(["runc", f"--root={runtime_root}", "list", "-q"], capture_output=True, text=True)
            for cid in out.stdout.split():
                subprocess.run(["runc", f"--root={runtime_root}", "kill", "--all", cid, "KILL"], capture_output=True)
            time.sleep(0.3 if out.stdout.split() else 0)
            for cid in out.stdout.split():
                subprocess.run(["runc", f"--root={runtime_root}", "delete", "--force", cid], capture_output=True)
            if out.stdout.split() or conmons:
                log(f"orch: force-removed {len(out.stdout.split())} runc containers, {len(conmons)} conmons")
        left = unmount_under(self.work)
        if left:
            log(f"orch: unmounted {len(left)} leftover mounts")


async def run_orch(args: argparse.Namespace, work: Path, registry: str, ref: str, td: Teardown) -> SideResult:
    res = SideResult("orch", args.count, args.concurrency or args.count, monitor="conmon", agent="orch daemon")
    d = OrchDaemon(work, registry, f"orch-bench-{uuid.uuid4().hex[:8]}")
    td.push("remove the orch work dir", lambda: shutil.rmtree(work, ignore_errors=True))
    if args.keep_logs:
        td.push("keep the orch daemon's log", lambda: keep_log(d.log_path, args.keep_logs / "orch-daemon.log"))
    td.push(f"remove cgroup parent {d.cgroup_parent}", lambda: remove_cgroup_parent(d.cgroup_parent))
    td.push("force-clean orch leftovers", d.force_cleanup)
    td.push("stop the orch daemon", d.stop)
    log("orch: starting the daemon")
    d.start()
    assert d.proc is not None
    pid = d.proc.pid
    base = "http://localhost"
    conn = aiohttp.UnixConnector(path=str(d.sock), limit=0)
    cids: list[str] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=900)) as s:
        try:
            # -- pull (not part of the start figures) --
            t0 = time.monotonic()
            final: dict[str, Any] = {}
            async with s.post(f"{base}/v1/images/pull", json={"ref": ref}) as r:
                if r.status != 200:
                    raise RuntimeError(f"orch pull: HTTP {r.status}: {await r.text()}")
                async for line in r.content:
                    if line.strip():
                        msg = json.loads(line)
                        if "progress" not in msg:
                            final = msg
            if "error" in final or "image" not in final:
                raise RuntimeError(f"orch pull failed: {final}")
            res.pull_s = time.monotonic() - t0
            log(f"orch: pulled in {res.pull_s:.2f}s; idling {args.idle:.0f}s for the idle RSS")
            await asyncio.sleep(args.idle)
            res.agent_idle_rss_mb = status_kb(pid, "VmRSS") / 1024
            res.load_before = os.getloadavg()[0]

            # -- the burst --
            inflight = asyncio.Semaphore(args.concurrency or args.count)

            async def one(i: int) -> tuple[float, float, int, dict[str, Any]]:
                body = {"image": ref, "name": f"bench-{i}", "args": CMD, "stop_grace": 1}
                async with inflight:
                    sent = time.time()
                    async with s.post(f"{base}/v1/containers", json=body) as r:
                        text = await r.text()
                    got = time.time()
                try:
                    data = json.loads(text)
                except ValueError:
                    data = {"error": {"message": text[:200]}}
                return sent, got, r.status, data

            log(f"orch: {args.count} create+start requests, {args.concurrency or args.count} at a time")
            cpu0 = cpu_seconds(pid)
            t_start = time.time()
            answers = await asyncio.gather(*(one(i) for i in range(args.count)))
            t_answered = time.time()
            listed = await (await s.get(f"{base}/v1/containers")).json()
            t_listed = time.time()
            res.agent_cpu_s = cpu_seconds(pid) - cpu0
            lat: list[float] = []
            errors: Counter[str] = Counter()
            for sent, got, status, data in answers:
                if status == 201:
                    cids.append(data["id"])
                    lat.append(got - sent)
                else:
                    msg = data.get("error", {}).get("message", "") if isinstance(data, dict) else str(data)
                    errors[f"HTTP {status}: {msg[:160]}"] += 1
            res.started = len(cids)
            res.failed = sum(errors.values())
            res.errors = dict(errors)
            by_id = {c["id"]: c for c in listed}
            running = [c for c in cids if by_id.get(c, {}).get("status") == "running"
                       and os.path.exists(f"/proc/{by_id[c].get('pid', 0)}")]
            res.running = len(running)
            # "Until all run": the last answer, confirmed by the listing taken right after it.
            res.set_latencies(lat, (t_listed if res.running == len(cids) else t_answered) - t_start)
            res.notes.append(f"last answer at {t_answered - t_start:.2f}s, listing confirmed "
                             f"{res.running}/{args.count} running at {t_listed - t_start:.2f}s")
            # Where the time went, from each record's own timestamps.
            queue, create, answer = [], [], []
            for sent, got, status, data in answers:
                if status == 201 and data.get("created") and data.get("started"):
                    queue.append(data["created"] - sent)
                    create.append(data["started"] - data["created"])
                    answer.append(got - data["started"])
            res.phases = {"to_created": phase_stats(queue), "created_to_started": phase_stats(create),
                          "started_to_answer": phase_stats(answer)}
            if res.started:
                firsts = sorted(data["started"] for _, _, st, data in answers if st == 201)
                res.notes.append(f"first container running at {firsts[0] - t_start:.2f}s, "
                                 f"half at {firsts[len(firsts) // 2] - t_start:.2f}s, "
                                 f"last at {firsts[-1] - t_start:.2f}s")
            log(f"orch: {res.started}/{args.count} started in {res.total_s:.2f}s "
                f"({res.per_s:.1f}/s), {res.running} running")

            # -- memory, and the agent's cost of merely supervising N containers --
            await asyncio.sleep(2)  # let conmon finish its start-up allocations
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(args.idle)
            res.agent_cpu_running_pct = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            res.set_monitors([p for c in cids if (p := d.conmon_pid(c)) and os.path.exists(f"/proc/{p}")])
            res.agent_after_rss_mb = status_kb(pid, "VmRSS") / 1024
            res.agent_peak_rss_mb = status_kb(pid, "VmHWM") / 1024
        finally:
            # -- remove what we started, through the engine --
            # Requests cut off by Ctrl-C still finish in the daemon, so list again until empty.
            t0 = time.monotonic()
            sem = asyncio.Semaphore(16)

            async def rm(cid: str) -> None:
                async with sem:
                    try:
                        async with s.delete(f"{base}/v1/containers/{cid}", params={"force": "1"}) as r:
                            if r.status not in (200, 404):
                                log(f"orch: rm {cid[:12]}: HTTP {r.status}: {(await r.text())[:200]}")
                    except aiohttp.ClientError as e:
                        log(f"orch: rm {cid[:12]}: {e}")

            removed = 0
            for _ in range(3):
                try:
                    ids = [c["id"] for c in await (await s.get(f"{base}/v1/containers")).json()]
                except (aiohttp.ClientError, ValueError, KeyError, TypeError):
                    break  # daemon gone: the teardown's forced clean-up takes over
                if not ids:
                    break
                log(f"orch: removing {len(ids)} containers")
                await asyncio.gather(*(rm(c) for c in ids))
                removed += len(ids)
                await asyncio.sleep(0.5)
            if removed:
                res.remove_s = time.monotonic() - t0
    problems = [ln for ln in d.log_path.read_text(errors="replace").splitlines()
                if " ERROR " in ln or " WARNING " in ln or "Traceback" in ln]
    if problems:
        res.notes.append(f"daemon log: {len(problems)} warning/error lines, first: {problems[0][:200]}")
    return res


# -- the runtime's own limit: runc run -d straight from the shell -------------------------------


def runc_bundle(bundle: Path) -> None:
    """One OCI bundle of the same busybox layer: rootfs unpacked once, read-only, shared by every container."""
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(busybox_layer().build())) as tf:
        tf.extractall(rootfs, filter="tar")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = CMD
    spec["process"]["env"] = IMAGE_CONFIG["Env"]
    spec["root"]["readonly"] = True
    (bundle / "config.json").write_text(json.dumps(spec))


async def run_limit(args: argparse.Namespace, work: Path, td: Teardown) -> SideResult:
    """N `runc run -d` of one bundle, as many at a time as orch's requests: what the runtime allows here.

    No image store, no overlay mount, no monitor, no API: the floor under any engine's start path."""
    res = SideResult("runc run -d", args.count, args.concurrency or args.count, monitor="none",
                     agent="none")
    bundle, state = work / "bundle", work / "runc-state"
    parent = f"orch-bench-limit-{uuid.uuid4().hex[:8]}"
    ids = [f"{parent}-{i}" for i in range(args.count)]

    def runc(*a: str) -> list[str]:
        return ["runc", "--root", str(state), *a]

    def cleanup() -> None:
        for cid in ids:
            subprocess.run(runc("delete", "--force", cid), capture_output=True, timeout=60, check=False)
        remove_cgroup_parent(parent)

    td.push(f"remove {work}", lambda: shutil.rmtree(work, ignore_errors=True))
    td.push("delete the runc containers", cleanup)
    runc_bundle(bundle)
    inflight = asyncio.Semaphore(args.concurrency or args.count)
    spec = json.loads((bundle / "config.json").read_text())

    async def one(i: int) -> tuple[float, int, str]:
        # Each container its own cgroup under one parent, as orch's containers have.
        # (runc refuses a symlinked rootfs: the config names the shared one by its absolute path.)
        cfg = work / f"c{i}"
        cfg.mkdir()
        (cfg / "config.json").write_text(json.dumps({
            **spec, "root": {**spec["root"], "path": str(bundle / "rootfs")},
            "linux": {**spec["linux"], "cgroupsPath": f"/{parent}/{ids[i]}"}}))
        # A detached container keeps runc's stdio: a file, not a pipe that would stay open.
        with open(cfg / "stderr", "wb") as err:
            async with inflight:
                t0 = time.monotonic()
                p = await asyncio.create_subprocess_exec(
                    *runc("run", "--detach", "--bundle", str(cfg), ids[i]), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=err)
                rc = await p.wait()
                lat = time.monotonic() - t0
        return lat, rc, (cfg / "stderr").read_text(errors="replace").strip()

    log(f"runc: {args.count} x `runc run -d`, {args.concurrency or args.count} at a time")
    res.load_before = os.getloadavg()[0]
    t_start = time.monotonic()
    answers = await asyncio.gather(*(one(i) for i in range(args.count)))
    t_answered = time.monotonic()
    listed = json.loads(subprocess.run(runc("list", "--format", "json"), capture_output=True, text=True,
                                       check=True).stdout or "null") or []
    t_listed = time.monotonic()
    errors: Counter[str] = Counter(err[:160] or f"exit {rc}" for _, rc, err in answers if rc)
    res.started = sum(1 for _, rc, _ in answers if rc == 0)
    res.failed, res.errors = sum(errors.values()), dict(errors)
    res.running = sum(1 for c in listed if c.get("status") == "running" and os.path.exists(f"/proc/{c.get('pid', 0)}"))
    res.set_latencies([lat for lat, rc, _ in answers if rc == 0],
                      (t_listed if res.running == res.started else t_answered) - t_start)
    log(f"runc: {res.started}/{args.count} started in {res.total_s:.2f}s ({res.per_s:.1f}/s), {res.running} running")
    t0 = time.monotonic()
    cleanup()
    res.remove_s = time.monotonic() - t0
    return res


# -- docker ------------------------------------------------------------------------------------


@dataclass
class PrivateDockerd:
    root: Path
    registry: str
    cgroup_parent: str
    proc: subprocess.Popen[bytes] | None = None
    outside_before: dict[str, bool] = field(default_factory=dict)

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    @property
    def exec_root(self) -> Path:
        return self.root / "x"  # short: containerd's socket lives below it

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = str(self.root / "cli")  # the client's config.json stays ours
        return env

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER_CLI, "-H", f"unix://{self.sock}", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env())

    def start(self) -> None:
        self.outside_before = {p: os.path.exists(p) for p in DOCKERD_OUTSIDE}
        (self.root / "cli").mkdir(parents=True, exist_ok=True)
        cfg = self.root / "daemon.json"
        # Its trust key would otherwise go to /etc/docker/key.json.
        cfg.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        argv = [
            DOCKERD, "--data-root", str(self.root / "data"), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.root / "dockerd.pid"), "-H", f"unix://{self.sock}", "--config-file", str(cfg),
            "--insecure-registry", self.registry, "--cgroup-parent", self.cgroup_parent,
            "--exec-opt", "native.cgroupdriver=cgroupfs",
            # Keep it off the host's network setup: no docker0, no iptables rules.
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--userland-proxy=false",
        ]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env())
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.sock.exists() and self.docker("version", timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not come up:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def containerd_pid(self) -> int:
        pids = pids_whose_cmdline_has(str(self.exec_root / "containerd"), "containerd")
        return pids[0] if pids else 0

    def shim_pids(self) -> list[int]:
        return pids_whose_cmdline_has(str(self.exec_root), "containerd-shim-runc-v2")

    def remove_all(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return float("nan")
        ids = self.docker("ps", "-aq").stdout.split()
        t0 = time.monotonic()
        if ids:
            log(f"docker: removing {len(ids)} containers")
            r = self.docker("rm", "-f", *ids, timeout=600)
            if r.returncode != 0:
                log(f"docker rm -f: {r.stderr.strip()[:300]}")
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def force_cleanup(self) -> None:
        shims = self.shim_pids()
        containerd = pids_whose_cmdline_has(str(self.exec_root), "containerd")
        kill_pids(shims + containerd)
        if shims or containerd:
            log(f"docker: killed {len(shims)} leftover shims, {len(containerd)} containerd")
            time.sleep(0.5)
        runc_root = self.exec_root / "runtime-runc" / "moby"
        if runc_root.is_dir():
            out = subprocess.run(["runc", f"--root={runc_root}", "list", "-q"], capture_output=True, text=True)
            for cid in out.stdout.split():
                subprocess.run(["runc", f"--root={runc_root}", "delete", "--force", cid], capture_output=True)
        left = unmount_under(self.root)
        if left:
            log(f"docker: unmounted {len(left)} leftover mounts")
        for p in DOCKERD_OUTSIDE:
            if not self.outside_before.get(p, True):
                try:
                    os.rmdir(p)  # only when empty: never anything another docker put there
                except OSError:
                    pass


def run_docker(args: argparse.Namespace, work: Path, registry: str, ref: str, td: Teardown) -> SideResult:
    res = SideResult("docker", args.count, monitor="containerd-shim-runc-v2", agent="dockerd + containerd")
    d = PrivateDockerd(work, registry, f"orch-bench-docker-{uuid.uuid4().hex[:8]}")
    td.push("remove the docker work dir", lambda: shutil.rmtree(work, ignore_errors=True))
    if args.keep_logs:
        td.push("keep dockerd's log", lambda: keep_log(d.log_path, args.keep_logs / "dockerd.log"))
    td.push(f"remove cgroup parent {d.cgroup_parent}", lambda: remove_cgroup_parent(d.cgroup_parent))
    td.push("force-clean docker leftovers", d.force_cleanup)
    td.push("stop dockerd", d.stop)
    log("docker: starting a private dockerd")
    d.start()
    assert d.proc is not None
    version = d.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    driver = d.docker("info", "--format", "{{.Driver}}").stdout.strip()
    res.notes.append(f"dockerd {version}, storage driver {driver}, client {DOCKER_CLI}")

    def engine_kb(key: str) -> float:
        return sum(status_kb(p, key) for p in (d.proc.pid if d.proc else 0, d.containerd_pid()) if p) / 1024

    try:
        t0 = time.monotonic()
        r = d.docker("pull", "-q", ref, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"docker pull {ref}: {r.stderr.strip()}")
        res.pull_s = time.monotonic() - t0
        log(f"docker: pulled in {res.pull_s:.2f}s; idling {args.idle:.0f}s for the idle RSS")
        time.sleep(args.idle)
        res.agent_idle_rss_mb = engine_kb("VmRSS")
        res.load_before = os.getloadavg()[0]
        cpu0 = cpu_seconds(d.proc.pid) + cpu_seconds(d.containerd_pid())
        log(f"docker: {args.count} sequential `docker run -d`")
        lat: list[float] = []
        errors: Counter[str] = Counter()
        t_start = time.monotonic()
        for _ in range(args.count):
            t = time.monotonic()
            r = d.docker("run", "-d", "--network", "none", ref, *CMD)
            if r.returncode == 0:
                lat.append(time.monotonic() - t)
            else:
                errors[r.stderr.strip()[:160]] += 1
        total = time.monotonic() - t_start
        res.agent_cpu_s = cpu_seconds(d.proc.pid) + cpu_seconds(d.containerd_pid()) - cpu0
        res.started, res.failed, res.errors = len(lat), sum(errors.values()), dict(errors)
        res.running = len(d.docker("ps", "-q", "--filter", "status=running").stdout.split())
        res.set_latencies(lat, total)
        log(f"docker: {res.started}/{args.count} started in {total:.2f}s ({res.per_s:.1f}/s), {res.running} running")
        time.sleep(2)
        cpu0, t0 = cpu_seconds(d.proc.pid) + cpu_seconds(d.containerd_pid()), time.monotonic()
        time.sleep(args.idle)
        res.agent_cpu_running_pct = 100 * (cpu_seconds(d.proc.pid) + cpu_seconds(d.containerd_pid()) - cpu0) / (
            time.monotonic() - t0)
        res.set_monitors(d.shim_pids())
        res.agent_after_rss_mb = engine_kb("VmRSS")
        res.agent_peak_rss_mb = engine_kb("VmHWM")
    finally:
        res.remove_s = d.remove_all()
    return res


# -- report ---------------------------------------------------------------------------------------


def goals(orch: SideResult, docker: SideResult | None, limit: SideResult | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    all_ok = orch.running == orch.count
    if limit is not None and limit.running == limit.count:
        share = limit.total_s / orch.total_s
        out.append({"goal": f"orch's start rate >= {GOAL_OF_LIMIT:g} of plain `runc run -d`'s (the runtime's limit)",
                    "value": f"{orch.total_s:.2f}s vs {limit.total_s:.2f}s ({share:.2f} of the limit)",
                    "met": all_ok and share >= GOAL_OF_LIMIT})
    else:
        out.append({"goal": f"orch's start rate >= {GOAL_OF_LIMIT:g} of plain `runc run -d`'s (the runtime's limit)",
                    "value": "limit not measured" if limit is None else f"runc: {limit.running}/{limit.count} ran",
                    "met": None})
    if docker is not None and docker.started:
        ratio = docker.total_s / orch.total_s
        out.append({"goal": f"all {orch.count} running in <= 1/{GOAL_RATIO:g} of docker's time",
                    "value": f"{orch.total_s:.2f}s vs {docker.total_s:.2f}s (x{ratio:.1f})",
                    "met": all_ok and ratio >= GOAL_RATIO})
    else:
        out.append({"goal": f"all {orch.count} running in <= 1/{GOAL_RATIO:g} of docker's time",
                    "value": "docker not measured", "met": None})
    out.append({"goal": f"monitor RSS per container <= {GOAL_MONITOR_MB:g} MB",
                "value": f"{orch.monitor_rss_mb:.2f} MB", "met": orch.monitor_rss_mb <= GOAL_MONITOR_MB})
    out.append({"goal": f"agent idle RSS <= {GOAL_AGENT_IDLE_MB:g} MB",
                "value": f"{orch.agent_idle_rss_mb:.1f} MB", "met": orch.agent_idle_rss_mb <= GOAL_AGENT_IDLE_MB})
    return out


def print_table(orch: SideResult, docker: SideResult | None, docker_note: str,
                limit: SideResult | None = None) -> None:
    def f(v: float, fmt: str) -> str:
        return "-" if v != v else format(v, fmt)

    def failures(r: SideResult) -> str:
        return f"{r.failed}" if not r.failed else f"{r.failed} FAILED"

    rows: list[tuple[str, Callable[[SideResult], str]]] = [
        ("started / running", lambda r: f"{r.started} / {r.running} of {r.count}"),
        ("failed", failures),
        ("total time until all run (s)", lambda r: f(r.total_s, ".2f")),
        ("start latency p50 (s)", lambda r: f(r.p50_s, ".3f")),
        ("start latency p99 (s)", lambda r: f(r.p99_s, ".3f")),
        ("containers per second", lambda r: f(r.per_s, ".1f")),
        ("monitor process", lambda r: r.monitor),
        ("monitor RSS per container (MB)", lambda r: f(r.monitor_rss_mb, ".2f")),
        ("monitor PSS per container (MB)", lambda r: f(r.monitor_pss_mb, ".2f")),
        ("agent", lambda r: r.agent),
        ("agent idle RSS (MB)", lambda r: f(r.agent_idle_rss_mb, ".1f")),
        ("agent RSS after (MB)", lambda r: f(r.agent_after_rss_mb, ".1f")),
        ("agent peak RSS (MB)", lambda r: f(r.agent_peak_rss_mb, ".1f")),
        ("agent CPU during starts (s)", lambda r: f(r.agent_cpu_s, ".2f")),
        ("agent CPU, N running, idle (% core)", lambda r: f(r.agent_cpu_running_pct, ".1f")),
        ("load average before starts", lambda r: f(r.load_before, ".2f")),
        ("image pull, untimed (s)", lambda r: f(r.pull_s, ".2f")),
        ("remove all (s)", lambda r: f(r.remove_s, ".2f")),
    ]
    sides = [orch] + ([limit] if limit else []) + ([docker] if docker else [])
    w0 = max(len(r[0]) for r in rows)
    cells = [[fn(s) for s in sides] for _, fn in rows]
    ws = [max(len(s.engine), *(len(c[i]) for c in cells)) for i, s in enumerate(sides)]
    print(f"\ncontainer start: {orch.count} x busybox `{' '.join(CMD)}` (orch: through the engine API, "
          f"{orch.concurrency} at a time; runc run -d: one shared bundle, as many at a time, no engine; "
          f"docker: sequential `docker run -d`)\n")
    print(f"{'':{w0}}  " + "  ".join(f"{s.engine:>{w}}" for s, w in zip(sides, ws)))
    for (label, _), c in zip(rows, cells):
        print(f"{label:{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(c, ws)))
    if docker is None:
        print(f"\ndocker: {docker_note}")
    elif docker.started and orch.total_s > 0:
        print(f"\nratio docker_time / orch_time: {docker.total_s / orch.total_s:.2f}")
    if limit is not None and limit.started and orch.total_s > 0:
        print(f"ratio limit_time / orch_time: {limit.total_s / orch.total_s:.2f} (orch's share of the runtime's rate)")
    if orch.phases:
        print(f"\norch: where each start's time went (s)  {'mean':>7} {'p50':>7} {'p99':>7} {'max':>7}")
        for name, st in orch.phases.items():
            print(f"  {PHASES.get(name, name):37} {st['mean']:7.3f} {st['p50']:7.3f} {st['p99']:7.3f} {st['max']:7.3f}")
        print("  (record timestamps: created is set after the image check, overlay mount and config.json;")
        print("   started after conmon + runc create, runc state and runc start)")
    for s in sides:
        for e, n in s.errors.items():
            print(f"{s.engine} error x{n}: {e}")
        for note in s.notes:
            print(f"{s.engine}: {note}")
    print("\ngoals:")
    for g in goals(orch, docker, limit):
        met = "n/a" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        print(f"  {met:8} {g['goal']}: {g['value']}")


def _clean_json(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: _clean_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean_json(x) for x in v]
    return v


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100, help="containers per engine (default 100)")
    ap.add_argument("--skip-docker", action="store_true", help="measure orch only")
    ap.add_argument("--idle", type=float, default=5.0,
                    help="seconds idle before the idle RSS, and over which the CPU with N running is taken (default 5)")
    ap.add_argument("--concurrency", type=int, default=0,
                    help="orch requests in flight at once (default: all of --count at once, as the agent would)")
    ap.add_argument("--skip-limit", action="store_true",
                    help="do not measure the runtime's limit (N plain `runc run -d`)")
    ap.add_argument("--keep-logs", type=Path, default=None, help="copy the daemons' logs into this directory")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.count < 1:
        ap.error("--count must be at least 1")
    if os.geteuid() != 0:
        ap.error("needs root (containers, mounts, cgroups)")
    for binary in (REGISTRY_BIN, "/usr/bin/conmon", "/usr/sbin/runc"):
        if not os.path.exists(binary) and not shutil.which(os.path.basename(binary)):
            ap.error(f"{binary} is missing (Debian packages docker-registry, conmon, runc)")

    # SIGTERM ends the run like Ctrl-C does: through the teardown below.
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # One teardown per part, so orch is gone before docker is measured.
    td_main, td_orch, td_limit, td_docker = Teardown(), Teardown(), Teardown(), Teardown()
    top = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    td_main.push(f"remove {top}", lambda: shutil.rmtree(top, ignore_errors=True))
    orch: SideResult | None = None
    docker: SideResult | None = None
    limit: SideResult | None = None
    docker_note = ""
    rc = 0
    try:
        log(f"building the image and starting the registry in {top}")
        reg, ref = start_registry(top, td_main)
        try:
            orch = asyncio.run(run_orch(args, top / "o", reg.addr, ref, td_orch))
        finally:
            td_orch.run()
        if not args.skip_limit:
            try:
                limit = asyncio.run(run_limit(args, top / "l", td_limit))
            finally:
                td_limit.run()
        if args.skip_docker:
            docker_note = "skipped (--skip-docker)"
        elif not (os.path.exists(DOCKERD) and os.path.exists(DOCKER_CLI)):
            docker_note = f"{DOCKERD} or {DOCKER_CLI} is not installed (Debian package docker.io): orch figures only"
        else:
            docker = run_docker(args, top / "d", reg.addr, ref, td_docker)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        docker_note = docker_note or "not measured: interrupted"
        rc = 130
    except Exception as e:
        log(f"failed: {type(e).__name__}: {e}")
        docker_note = docker_note or f"not measured: {type(e).__name__}: {e}"
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave things behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        for td in (td_docker, td_limit, td_orch, td_main):
            td.run()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    problems = td_orch.problems + td_limit.problems + td_docker.problems + td_main.problems
    if problems:
        log("left behind: " + "; ".join(problems))
        rc = rc or 1
    if orch is None:
        return rc or 1
    if args.json:
        out = {"count": args.count, "image": IMAGE_REPO, "command": CMD, "orch": asdict(orch),
               "docker": asdict(docker) if docker else None, "docker_note": docker_note,
               "limit": asdict(limit) if limit else None,
               "share_of_limit": (limit.total_s / orch.total_s) if limit and limit.started else None,
               "ratio_docker_over_orch": (docker.total_s / orch.total_s) if docker and docker.started else None,
               "goals": goals(orch, docker, limit), "cleanup_problems": problems}
        print(json.dumps(_clean_json(out), indent=2))
    else:
        print_table(orch, docker, docker_note, limit)
    return rc


if __name__ == "__main__":
    sys.exit(main())
