"""orch as a system service on this host (`orch system install/status/uninstall`).

What is written is rendered by pure functions (`render_unit`,
`render_default_config`); the steps that write it compare before they
write, so running install twice changes nothing the second time (no
reload, no restart). systemd is driven through `systemctl` only (a
boundary we do not own: tests put a fake one on PATH and a temporary
directory as the root of the files written). The daemon itself is asked
through `Probe`, which the CLI provides (its unix-socket client).

`purge` leaves the host as it was: it stops what the daemon left running
(containers' processes in its cgroup parent), unmounts what is mounted
under its data directory, removes its network namespaces, host links and
nftables table (by the names and aliases of overlay_net.names), its
cgroups, then its files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config, parse_config
from .hostdeps import describe, missing
from .options import OPTIONS, defaults

UNIT = "orch.service"
CONFIG_PATH = "/etc/orch/daemon.yaml"
UNIT_PATH = "/etc/systemd/system/orch.service"
RUN_DIR = "/run/orch"

# The daemon is the last thing the kernel's OOM killer should pick: killing
# it loses the node's session while the containers it serves (oomScoreAdj 0,
# agent/runtime/spec.py) go on using the memory.
OOM_SCORE_ADJ = -900


class InstallError(Exception):
    """A step of install/uninstall failed; `step` names it."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


# When the host shuts down (not on a restart or a plain stop of the unit),
# the containers go too: SIGTERM, SIGKILL after 10 s, as `docker stop` does.
# Without it a container whose PID 1 ignores SIGTERM (a pid namespace's init
# without a handler: `sleep`) holds the shutdown for systemd's final 90 s.
SHUTDOWN_STOP = (
    "/bin/sh -c 'test \"$$(systemctl is-system-running)\" = stopping || exit 0; "
    "procs() {{ cat $$(find /sys/fs/cgroup -path \"*/{parent}/*\" -name cgroup.procs) 2>/dev/null | sort -u; }}; "
    "p=$$(procs); test -n \"$$p\" || exit 0; kill -TERM $$p 2>/dev/null; i=0; "
    "while test -n \"$$(procs)\" && test $$i -lt 100; do sleep 0.1; i=$$((i+1)); done; "
    "p=$$(procs); test -z \"$$p\" || kill -KILL $$p 2>/dev/null; exit 0'"
)


def render_unit(orch_bin: str, config_path: str = CONFIG_PATH, cgroup_parent: str = "orch") -> str:
    """The systemd unit of `orch daemon` (pure)."""
    parent = cgroup_parent.strip("/")
    stop = ""
    if re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", parent):
        stop = ("# At shutdown only: the containers are stopped (SIGTERM, SIGKILL after 10 s).\n"
                f"ExecStopPost={SHUTDOWN_STOP.format(parent=parent)}\n")
    return f"""\
# Written by `orch system install`; `orch system uninstall` removes it.
[Unit]
Description=orch node daemon (container engine and agent; manager when the node is one)
Documentation=https://example.invalid/orch man:orch(1)
Wants=network-online.target
After=network-online.target nftables.service local-fs.target
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=simple
ExecStart={shlex.quote(orch_bin)} daemon --config {shlex.quote(config_path)}
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=2s
# Containers (conmon + the OCI runtime) outlive a restart of the daemon,
# which adopts them again: stopping the unit stops the daemon only.
KillMode=process
{stop}TimeoutStopSec=30s
# Not OOM-killed before the containers it runs (they get 0 back).
OOMScoreAdjust={OOM_SCORE_ADJ}
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
Delegate=yes
RuntimeDirectory=orch
RuntimeDirectoryPreserve=yes

[Install]
WantedBy=multi-user.target
"""


def render_default_config(data_dir: str | None = None) -> str:
    """/etc/orch/daemon.yaml as first written: every option, commented out at
    its default, so a person sees what can be set (pure)."""
    out = ["# orch daemon options: the flags of `orch daemon --help` without their dashes.",
           "# A flag given on the command line wins over this file. Unknown keys are errors.",
           "# `orch system install` restarts the daemon when this file changed.", ""]
    for o in OPTIONS:
        value = data_dir if (o.key == "data-dir" and data_dir) else o.default
        if o.kind == "bool":
            text = "true" if value else "false"
        elif o.kind == "list":
            text = "[" + ", ".join(value) + "]"
        elif value is None:
            text = ""
        elif value == "":
            text = '""'
        else:
            text = str(value)
        out.append(f"# {o.help}")
        out.append(f"{'' if o.key == 'data-dir' and data_dir else '# '}{o.key}: {text}".rstrip())
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Layout:
    """Where install writes. `root` is "/" on a host; tests give a temporary
    directory (the daemon's own paths come from its config and are not moved)."""

    root: str = "/"

    def at(self, path: str) -> Path:
        return Path(self.root) / path.lstrip("/")

    @property
    def unit(self) -> Path:
        return self.at(UNIT_PATH)

    @property
    def config(self) -> Path:
        return self.at(CONFIG_PATH)


@dataclass
class Step:
    name: str
    changed: bool
    detail: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    def add(self, name: str, changed: bool, detail: str = "") -> None:
        self.steps.append(Step(name, changed, detail))

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.steps)


# The daemon's answers, as the CLI's client gives them: (method, path, body, timeout) -> JSON, or raises.
Probe = Callable[[str, str, Any, float], Any]


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemctl")
    if exe is None:
        raise InstallError("systemctl", "systemctl not found: orch system install needs systemd")
    cp = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    if check and cp.returncode != 0:
        raise InstallError(f"systemctl {' '.join(args)}", (cp.stderr or cp.stdout).strip()
                           or f"exited with {cp.returncode}")
    return cp


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True


def effective(cfg: Config | None) -> dict[str, Any]:
    """Every option's value on this host: the config file's over the defaults."""
    out = defaults()
    if cfg is not None:
        out.update(cfg.values)
    return out


def install(layout: Layout, orch_bin: str, *, config_text: str | None = None, config_name: str = "",
            probe: Probe | None = None, wait: float = 180.0,
            join: tuple[str, str] | None = None, advertise_addr: str | None = None) -> Report:
    """Install and start orch here; join a cluster when `join` = (token, manager).
    `config_text` (from --config) replaces the config file; without it an
    existing file is kept as it is and a missing one is written with defaults."""
    rep = Report()
    # 1. Check everything before writing anything.
    if config_text is not None:
        try:
            cfg: Config | None = parse_config(config_text, config_name or "--config")
        except ConfigError as e:
            raise InstallError("config", str(e)) from None
        text = config_text
    elif layout.config.exists():
        try:
            cfg = load_config(str(layout.config), required=True)
        except ConfigError as e:
            raise InstallError("config", f"{e} (fix it, or give a new one with --config)") from None
        text = layout.config.read_text()
    else:
        text = render_default_config()
        cfg = parse_config(text, str(layout.config))
    values = effective(cfg)
    lacking = missing(values["runtime"])
    if lacking:
        raise InstallError("packages", describe(lacking))
    if not os.path.isabs(orch_bin) or not os.access(orch_bin, os.X_OK):
        raise InstallError("binary", f"{orch_bin} is not an executable path (run orch from its virtual environment)")

    # 2. Files.
    config_changed = _write_if_changed(layout.config, text, 0o644)
    rep.add("config", config_changed, str(layout.config))
    data = Path(values["data_dir"])
    made = not data.is_dir()
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    rep.add("data directory", made, str(data))
    unit_changed = _write_if_changed(layout.unit, render_unit(orch_bin, str(layout.config), values["cgroup_parent"]),
                                     0o644)
    rep.add("unit", unit_changed, str(layout.unit))

    # 3. systemd.
    if unit_changed:
        systemctl("daemon-reload")
    enabled = systemctl("is-enabled", UNIT, check=False).stdout.strip() == "enabled"
    if not enabled:
        systemctl("enable", UNIT)
    rep.add("enable", not enabled, UNIT)
    active = systemctl("is-active", UNIT, check=False).stdout.strip() == "active"
    if not active:
        systemctl("start", UNIT)
        rep.add("start", True, UNIT)
    elif config_changed or unit_changed:
        systemctl("restart", UNIT)
        rep.add("restart", True, "the config or the unit changed")
    else:
        rep.add("start", False, "running")

    # 4. The daemon answers; join when asked.
    if probe is None:
        return rep
    info = wait_ready(probe, wait)
    if join is not None:
        if info.get("cluster"):
            c = info["cluster"]
            rep.add("join", False, f"already a {c.get('role', 'member')} of a cluster (node {c.get('node_id')})")
        else:
            token, manager = join
            try:
                res = probe("POST", "/v1/swarm/join", {"token": token, "remote": manager,
                                                       "advertise_addr": advertise_addr}, 180.0)
            except Exception as e:
                raise InstallError("join", str(e)) from None
            rep.add("join", True, f"joined {manager} as a {res.get('role')} (node {res.get('node_id')})")
    return rep


def wait_ready(probe: Probe, wait: float) -> dict[str, Any]:
    """The daemon's /v1/info once its socket answers; InstallError after `wait` s."""
    deadline = time.monotonic() + wait
    last = ""
    down = 0
    while True:
        try:
            return probe("GET", "/v1/info", None, 5.0) or {}
        except Exception as e:
            last = str(e)
        # A daemon that exited (a bad option, a missing package) is not waited for.
        state = systemctl("is-active", UNIT, check=False).stdout.strip()
        down = down + 1 if state in ("inactive", "failed") else 0
        if down >= 3 or time.monotonic() > deadline:
            hint = systemctl("status", "--no-pager", "-n", "20", UNIT, check=False).stdout.strip()
            why = f"the service is {state}" if down >= 3 else f"no answer after {wait:.0f} s"
            raise InstallError("wait for the daemon", f"{why} ({last}); systemctl status {UNIT}:\n{hint}")
        time.sleep(0.5)


def status(layout: Layout, probe: Probe | None) -> dict[str, Any]:
    """What is installed and how the daemon is (for `orch system status`)."""
    out: dict[str, Any] = {"unit": str(layout.unit) if layout.unit.exists() else None,
                           "config": str(layout.config) if layout.config.exists() else None}
    if shutil.which("systemctl"):
        out["enabled"] = systemctl("is-enabled", UNIT, check=False).stdout.strip() or "unknown"
        out["active"] = systemctl("is-active", UNIT, check=False).stdout.strip() or "unknown"
    try:
        cfg = load_config(str(layout.config), required=False)
        values = effective(cfg)
        out["data_dir"] = values["data_dir"]
        out["socket"] = values["socket_path"]
    except ConfigError as e:
        out["config_error"] = str(e)
    out["daemon"] = None
    if probe is not None:
        try:
            out["daemon"] = probe("GET", "/v1/info", None, 5.0)
        except Exception as e:
            out["daemon_error"] = str(e)
    return out


def uninstall(layout: Layout, *, purge: bool, probe: Probe | None = None) -> Report:
    """Stop, disable and remove the unit and the config; with `purge`, also
    leave the cluster and remove everything the daemon made on this host."""
    rep = Report()
    try:
        cfg = load_config(str(layout.config), required=False)
    except ConfigError:
        cfg = None  # a broken config is removed all the same; purge uses the defaults then
    values = effective(cfg)
    if purge and probe is not None:
        try:
            probe("POST", "/v1/swarm/leave", {"force": True}, 60.0)
            rep.add("leave", True, "left the cluster")
        except Exception as e:
            rep.add("leave", False, f"not left ({e})")
    if layout.unit.exists() or systemctl("is-active", UNIT, check=False).stdout.strip() == "active":
        systemctl("disable", "--now", UNIT, check=False)
        rep.add("stop", True, UNIT)
    for path in (layout.unit, layout.config):
        if path.exists():
            path.unlink()
            rep.add("remove", True, str(path))
    if rep.changed:
        systemctl("daemon-reload", check=False)
    try:
        layout.config.parent.rmdir()  # /etc/orch, when nothing else is in it
    except OSError:
        pass
    if purge:
        for name, changed, detail in purge_host(values, layout):
            rep.add(name, changed, detail)
    return rep


# -- purge --------------------------------------------------------------------


def _mounts_under(root: str) -> list[str]:
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == root or mp.startswith(root.rstrip("/") + "/"):
                    found.append(mp)
    except OSError:
        pass
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _cgroup_dirs(parent: str) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    candidates = [base / parent] + ([d / parent for d in base.iterdir() if d.is_dir()] if base.is_dir() else [])
    return [p for p in candidates if p.is_dir() and (p / "cgroup.procs").exists()]


def _kill_cgroup(d: Path) -> int:
    pids: set[int] = set()
    for procs in [d / "cgroup.procs", *d.rglob("cgroup.procs")]:
        try:
            pids.update(int(x) for x in procs.read_text().split())
        except (OSError, ValueError):
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _rmdir_tree(d: Path) -> None:
    for _ in range(50):  # killed processes leave their cgroups a moment later
        try:
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda s: len(s.parts), reverse=True):
                sub.rmdir()
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    raise InstallError("purge", f"cannot remove the cgroup {d}: processes are still in it")


def purge_host(values: dict[str, Any], layout: Layout) -> list[tuple[str, bool, str]]:
    """Remove what a daemon with these option values made on this host."""
    from overlay_net.names import NETNS_DIR, TAG, Naming

    data = os.path.abspath(values["data_dir"])
    if len(Path(data).parts) < 3:
        raise InstallError("purge", f"data-dir {data} is too close to the root to be removed whole; "
                                    "remove it by hand")
    done: list[tuple[str, bool, str]] = []
    # Processes first (containers, conmon), so nothing holds what follows.
    killed = 0
    for d in _cgroup_dirs(values["cgroup_parent"].strip("/")):
        killed += _kill_cgroup(d)
    done.append(("processes", killed > 0, f"{killed} killed in cgroup {values['cgroup_parent']}"))
    mounts = _mounts_under(data)
    for mp in mounts:
        subprocess.run(["umount", "-l", mp], capture_output=True)
    done.append(("mounts", bool(mounts), f"{len(mounts)} under {data}"))
    naming = Naming(values["network_prefix"])
    gone = 0
    if os.path.isdir(NETNS_DIR):
        for name in sorted(os.listdir(NETNS_DIR)):
            if name.startswith(values["network_prefix"]):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
                gone += 1
    done.append(("network namespaces", gone > 0, f"{gone} named {values['network_prefix']}*"))
    # `ip netns add` made NETNS_DIR a bind mount of itself; once no namespace is
    # left in it (whoever made them), that mount goes too, as before install.
    if os.path.isdir(NETNS_DIR) and not os.listdir(NETNS_DIR) and os.path.ismount(NETNS_DIR):
        subprocess.run(["umount", NETNS_DIR], capture_output=True)
        done.append(("mounts", True, f"{NETNS_DIR} (empty)"))
    links = _links_tagged(f"{TAG}:{naming.prefix}")
    for ifname in links:
        subprocess.run(["ip", "link", "delete", ifname], capture_output=True)
    done.append(("links", bool(links), ", ".join(links) or "none"))
    table = naming.nft_table
    had = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True).returncode == 0
    if had:
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)
    done.append(("nftables", had, f"table ip {table}"))
    cgs = _cgroup_dirs(values["cgroup_parent"].strip("/"))
    for d in cgs:
        _rmdir_tree(d)
    done.append(("cgroups", bool(cgs), ", ".join(map(str, cgs)) or "none"))
    for path in (data, values["socket_path"], str(layout.at(RUN_DIR))):
        if path and os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            done.append(("files", True, path))
    return done


def _links_tagged(tag: str) -> list[str]:
    """Host-namespace links whose alias starts with `tag` (overlay_net.names)."""
    cp = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    out = []
    for line in cp.stdout.splitlines():
        if f"alias {tag}" in line:
            out.append(line.split(":")[1].strip().split("@")[0])
    return out
