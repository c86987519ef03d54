"""/etc/orch/daemon.yaml: every `orch daemon` option can be set there, flags
win, and every mistake is reported at file:line before anything is made;
the host's Debian packages are checked at start from the one list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from cli.daemon import _params
from daemon import hostdeps
from daemon.config import ConfigError, merge, parse_config
from daemon.options import BY_KEY, FLAGS, OPTIONS, build_kwargs, build_options, defaults

ROOT = Path(__file__).resolve().parents[2]


def test_the_flags_and_the_file_come_from_one_table() -> None:
    flags = {p.opts[0] for p in _params() if isinstance(p, click.Option)}
    assert flags == {o.flag for o in OPTIONS} | {"--config"}
    assert set(FLAGS.values()) <= {o.flag for o in OPTIONS}
    # Every option of the daemon is a keyword of build_options (but the log level, the command's own).
    import inspect

    kws = set(inspect.signature(build_options).parameters)
    assert {o.dest for o in OPTIONS} - {"log_level"} == kws


def test_every_option_can_be_set_in_the_file() -> None:
    text = "\n".join([
        "data-dir: /srv/orch", "node-id: 3", "listen-addr: 10.0.0.1:4343", "initial-cluster: 3=10.0.0.1:4343",
        "manager: true", "socket: /run/o.sock", "tick-ms: 50", "election-ticks: 20", "snapshot-every: 7",
        "keep-entries: 0", "insecure-registry: [reg:5000, 10.0.0.0/8]", "registry-auth-file: /etc/orch/auth.json",
        "runtime: crun", "cgroup-parent: orch.slice/x", "hostname: vm1", "network-prefix: o-",
        "heartbeat-period: 1", "log-level: debug", "metrics-addr: 127.0.0.1:9323",
    ])
    cfg = parse_config(text, "/etc/orch/daemon.yaml")
    assert set(cfg.values) == {o.dest for o in OPTIONS}
    assert cfg.values["insecure"] == ("reg:5000", "10.0.0.0/8")
    assert cfg.values["heartbeat_period"] == 1.0 and isinstance(cfg.values["heartbeat_period"], float)
    assert cfg.lines["runtime"] == 13
    assert cfg.where("runtime") == "/etc/orch/daemon.yaml:13: runtime"
    kw = build_kwargs(merge(defaults(), set(), cfg))
    assert kw["data_dir"] == "/srv/orch" and kw["as_manager"] is True and kw["insecure"] == ("reg:5000", "10.0.0.0/8")


def test_flags_given_win_over_the_file_which_wins_over_defaults() -> None:
    cfg = parse_config("data-dir: /srv/orch\nruntime: crun\n", "f.yaml")
    flags = {**defaults(), "runtime": "runc", "hostname": "cli"}
    out = merge(flags, {"runtime", "hostname"}, cfg)
    assert out["runtime"] == "runc"  # given on the command line
    assert out["data_dir"] == "/srv/orch"  # from the file
    assert out["tick_ms"] == 100 and out["hostname"] == "cli"  # default; flag
    assert parse_config("", "f").values == {} and parse_config("# nothing\n", "f").values == {}


@pytest.mark.parametrize(("text", "expected"), [
    ("data-dir: /x\nruntim: crun\n", "f.yaml:2: unknown option 'runtim' (did you mean 'runtime'?)"),
    ("tick-ms: 10\ntick-ms: 20\n", "f.yaml:2: tick-ms is set twice (also at line 1)"),
    ("\n\ntick-ms: fast\n", "f.yaml:3: tick-ms: must be an integer, got str 'fast'"),
    ("election-ticks: 1\n", "f.yaml:1: election-ticks: must be at least 2, got 1"),
    ("manager: yes please\n", "f.yaml:1: manager: must be true or false"),
    ("insecure-registry:\n  - a:1\n  - 5\n", "f.yaml:2: insecure-registry: must be a list of strings"),
    ("log-level: loud\n", "f.yaml:1: log-level: must be one of debug, info, warning, error, got 'loud'"),
    ("hostname: 12\n", "f.yaml:1: hostname: must be a string, got int 12 (quote it)"),
    ("- data-dir\n", "f.yaml:1: must be a mapping of option: value"),
    ("data-dir: [\n", "f.yaml:2: not valid YAML"),
])
def test_mistakes_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.yaml")
    assert str(e.value).startswith(expected), str(e.value)


def test_underscores_are_taken_for_dashes() -> None:
    assert parse_config("data_dir: /x\n", "f").values == {"data_dir": "/x"}
    assert set(BY_KEY) == {o.key for o in OPTIONS}


def _daemon(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cli.main", "daemon", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize(("yaml_text", "flags", "expected"), [
    ("hostname: vm1\ncgroup-parent: ..\n", [], "config: {cfg}:2: cgroup-parent: must be a cgroup path below the root"),
    ("insecure-registry: [ok:1, 'http://r:5000']\n", [],
     "config: {cfg}:1: insecure-registry: 'http://r:5000': give host:port without a scheme"),
    ("runtme: crun\n", [], "config: {cfg}:1: unknown option 'runtme' (did you mean 'runtime'?)"),
    # A flag given wins, so its own error names the flag, not the file.
    ("cgroup-parent: orch\n", ["--cgroup-parent", ".."], "Invalid value for --cgroup-parent"),
])
def test_orch_daemon_reports_the_files_mistakes_before_making_anything(
        tmp_path: Path, yaml_text: str, flags: list[str], expected: str) -> None:
    cfg = tmp_path / "daemon.yaml"
    data = tmp_path / "data"
    cfg.write_text(f"data-dir: {data}\nsocket: {tmp_path / 's.sock'}\n" + yaml_text)
    r = _daemon(tmp_path, "--config", str(cfg), *flags)
    assert r.returncode in (1, 2), r.stderr
    assert "Traceback" not in r.stderr
    assert expected.format(cfg=cfg).replace(":2:", ":4:").replace(":1:", ":3:") in " ".join(r.stderr.split()), \
        r.stderr
    assert not data.exists()


def test_a_config_file_named_but_missing_is_an_error(tmp_path: Path) -> None:
    r = _daemon(tmp_path, "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1 and f"{tmp_path / 'nope.yaml'}: no such file" in r.stderr


def test_missing_packages_are_named_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = _daemon(tmp_path, "--data-dir", str(data), "--socket", str(tmp_path / "s.sock"),
                "--runtime", "no-such-runtime-x")
    assert r.returncode == 1
    msg = " ".join(r.stderr.split())
    assert "this host lacks Debian packages orch needs: no-such-runtime-x (no no-such-runtime-x on PATH" in msg
    assert "apt-get install no-such-runtime-x" in msg
    assert not data.exists()


def test_the_package_list_checks_what_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hostdeps.missing("runc") == []  # this machine runs the suite: it has them all
    monkeypatch.setattr(hostdeps, "SEARCH_PATH", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    names = {n.package for n in hostdeps.missing("crun")}
    assert {"conmon", "nftables", "util-linux", "procps", "crun"} <= names
    assert "python3-venv" not in names  # only checked when installing
    (tmp_path / "conmon").write_text("#!/bin/sh\n")
    (tmp_path / "conmon").chmod(0o755)
    assert "conmon" not in {n.package for n in hostdeps.missing("crun")}


def test_the_shell_check_is_the_same_list(tmp_path: Path) -> None:
    script = hostdeps.shell_check("runc")
    ok = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == ""
    bare = subprocess.run(["sh", "-c", script.replace("command -v conmon", "command -v conmon-nope")
                           .replace("command -v runc", "command -v runc-nope")],
                          capture_output=True, text=True)
    assert bare.returncode == 1
    assert bare.stdout.splitlines() == ["MISSING conmon no conmon on PATH", "MISSING runc no runc on PATH"]
    assert {n.package for n in hostdeps.needs_for("runc", installing=True)} == {
        line.split("'MISSING ")[1].split()[0] for line in script.splitlines() if "MISSING" in line}
