"""`orch system install/status/uninstall` on this host, with the files
under a temporary root and a fake `systemctl` on PATH (systemd is a boundary
we do not own and does not run here; the fake runs the unit's ExecStart as
systemd would, see fake_systemctl.py). The daemon it starts is a real
`orch daemon` reading the installed config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from daemon.config import parse_config
from daemon.install import OOM_SCORE_ADJ, render_default_config, render_unit
from daemon.options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


# -- what is written (pure) ----------------------------------------------------------


def test_the_unit() -> None:
    u = render_unit("/opt/orch/bin/orch")
    lines = u.splitlines()
    assert "ExecStart=/opt/orch/bin/orch daemon --config /etc/orch/daemon.yaml" in lines
    for line in ("Restart=on-failure", "After=network-online.target nftables.service local-fs.target",
                 "Wants=network-online.target", f"OOMScoreAdjust={OOM_SCORE_ADJ}", "KillMode=process",
                 "LimitNOFILE=1048576", "TasksMax=infinity", "WantedBy=multi-user.target", "Delegate=yes"):
        assert line in lines, line
    assert OOM_SCORE_ADJ < -500  # well below the containers' 0
    assert "ExecStart='/opt/my orch/bin/orch' daemon" in render_unit("/opt/my orch/bin/orch")


def test_the_default_config_lists_every_option_and_sets_none_but_asked() -> None:
    text = render_default_config()
    for o in OPTIONS:
        assert f"# {o.key}:" in text
    assert parse_config(text, "d.yaml").values == {}
    assert parse_config(render_default_config("/srv/orch"), "d.yaml").values == {"data_dir": "/srv/orch"}
    # Uncommenting any line gives a valid file (its default).
    for line in text.splitlines():
        if line.startswith("# ") and ":" in line and line[2:].split(":")[0] in {o.key for o in OPTIONS}:
            parse_config(line[2:] + "\n", "d.yaml")


def test_a_spec_gives_containers_oom_score_adj_0(tmp_path: Path) -> None:
    from agent.runtime.spec import ContainerSpec, build_config

    (tmp_path / "etc").mkdir()
    cfg = build_config(ContainerSpec(image="x"), {"Cmd": ["true"]}, str(tmp_path), container_id="c" * 64,
                       cgroups_path="/t/c")
    assert cfg["process"]["oomScoreAdj"] == 0


# -- install / uninstall against a temporary root -----------------------------------


class Host:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.state = tmp / "systemd"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        ctl = self.bin / "systemctl"
        ctl.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'fake_systemctl.py'} \"$@\"\n")
        ctl.chmod(0o755)
        orch = self.bin / "orch"
        orch.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m cli.main \"$@\"\n")
        orch.chmod(0o755)
        self.tag = tag = uuid.uuid4().hex[:6]
        self.cgroup = f"orch-systest-{tag}"
        self.prefix = f"ost{tag}-"
        self.data = tmp / "data"
        self.sock = tmp / "orch.sock"
        self.env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "ORCH_SYSTEM_ROOT": str(self.root),
                    "ORCH_SYSTEM_BIN": str(orch), "FAKE_SYSTEMD_STATE": str(self.state), "PYTHONPATH": str(ROOT)}

    def config(self, extra: str = "") -> Path:
        p = self.tmp / "daemon.yaml"
        p.write_text(f"data-dir: {self.data}\nsocket: {self.sock}\ncgroup-parent: {self.cgroup}\n"
                     f"network-prefix: {self.prefix}\nhostname: systest\nlisten-addr: 127.0.0.1:{20000 + int(self.tag, 16) % 20000}\n{extra}")
        return p

    def orch(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "orch"), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=self.tmp)

    def calls(self) -> list[str]:
        try:
            return (self.state / "calls").read_text().splitlines()
        except FileNotFoundError:
            return []

    def changes(self) -> list[str]:
        """The calls that change something (not the queries)."""
        return [c for c in self.calls() if c.split()[0] not in ("is-active", "is-enabled", "status")]

    def daemon_pid(self) -> int | None:
        try:
            pid = int((self.state / "pid").read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
            return None if state in "ZX" else pid
        except (OSError, ValueError):
            return None


@pytest.fixture
def host(tmp_path: Path):  # type: ignore[no-untyped-def]
    h = Host(tmp_path)
    yield h
    # Whatever a failed test left: the daemon and its files.
    pid = h.daemon_pid()
    if pid:
        os.kill(pid, 9)
    from daemon.install import purge_host
    from daemon.install import Layout
    from daemon.options import defaults

    vals = {**defaults(), "data_dir": str(h.data), "socket_path": str(h.sock), "cgroup_parent": h.cgroup,
            "network_prefix": h.prefix}
    purge_host(vals, Layout(str(h.root)))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root")
def test_install_twice_changes_nothing_then_purge_leaves_nothing(host: Host) -> None:
    cfg = host.config()
    r = host.orch("system", "install", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr + (host.state / "daemon.log").read_text()
    unit = host.root / "etc/systemd/system/orch.service"
    installed = host.root / "etc/orch/daemon.yaml"
    assert installed.read_text() == cfg.read_text()
    assert f"ExecStart={host.bin / 'orch'} daemon --config {installed}" in unit.read_text()
    assert host.changes() == ["daemon-reload", "enable orch.service", "start orch.service"]
    assert host.daemon_pid() is not None and host.sock.exists()

    # Again: nothing written, reloaded, enabled or restarted.
    before = (unit.stat().st_mtime_ns, installed.stat().st_mtime_ns, host.daemon_pid())
    r = host.orch("system", "install", "--config", str(cfg))
    assert r.returncode == 0 and "Nothing to change." in r.stdout, r.stdout + r.stderr
    assert host.changes() == ["daemon-reload", "enable orch.service", "start orch.service"]
    assert (unit.stat().st_mtime_ns, installed.stat().st_mtime_ns, host.daemon_pid()) == before

    r = host.orch("system", "status", "--format", "json")
    st = json.loads(r.stdout)
    assert st["active"] == "active" and st["enabled"] == "enabled" and st["daemon"] == {"cluster": None}

    # A changed config restarts the daemon with it.
    cfg.write_text(cfg.read_text() + "log-level: debug\n")
    r = host.orch("system", "install", "--config", str(cfg))
    assert r.returncode == 0 and "changed   restart" in r.stdout, r.stdout + r.stderr
    assert host.daemon_pid() not in (None, before[2])

    # Something for purge to find, as the daemon's containers and networks would leave.
    cg = Path("/sys/fs/cgroup/pids") / host.cgroup / "c1"
    if not (Path("/sys/fs/cgroup/pids").is_dir()):
        cg = Path("/sys/fs/cgroup") / host.cgroup / "c1"
    cg.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "300"])
    (cg / "cgroup.procs").write_text(str(sleeper.pid))
    subprocess.run(["ip", "netns", "add", f"{host.prefix}ov-test"], check=True)
    (host.data / "mnt").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(host.data / "mnt")], check=True)

    r = host.orch("system", "uninstall", "--purge")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sleeper.wait(timeout=10) == -9
    assert not unit.exists() and not installed.exists() and not installed.parent.exists()
    assert not host.data.exists() and not host.sock.exists()
    assert not cg.parent.exists()
    assert not Path(f"/run/netns/{host.prefix}ov-test").exists()
    assert str(host.data) not in Path("/proc/self/mountinfo").read_text()
    assert host.daemon_pid() is None
    assert "disable --now orch.service" in host.calls()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs root")
def test_a_bad_config_or_join_is_named_and_writes_nothing(host: Host) -> None:
    bad = host.config("runtim: crun\n")
    r = host.orch("system", "install", "--config", str(bad))
    assert r.returncode == 1
    assert f"system install: config: {bad}:7: unknown option 'runtim' (did you mean 'runtime'?)" in \
        " ".join(r.stderr.split())
    assert not (host.root / "etc").exists() and host.calls() == []

    r = host.orch("system", "install", "--config", str(host.config("runtime: no-such-runtime\n")))
    assert r.returncode == 1 and "system install: packages: this host lacks" in r.stderr
    assert "apt-get install no-such-runtime" in " ".join(r.stderr.split())
    assert not (host.root / "etc").exists()

    # A join that fails names the step (the daemon is installed and runs: a later install retries the join).
    t0 = time.monotonic()
    r = host.orch("system", "install", "--config", str(host.config()), "--join", "ORCHTKN-1-nope", "127.0.0.1:9")
    assert r.returncode == 1 and "system install: join:" in r.stderr, r.stdout + r.stderr
    assert time.monotonic() - t0 < 100
    r = host.orch("system", "uninstall", "--purge")
    assert r.returncode == 0, r.stderr
    assert not host.data.exists()


def test_advertise_addr_needs_join(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cli.main", "system", "install", "--advertise-addr", "10.0.0.1"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert r.returncode == 1 and "--advertise-addr goes with --join" in r.stderr
