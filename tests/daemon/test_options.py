"""NodeOptions and ManagerSettings refuse bad values with errors naming the
field, and `orch daemon` turns them into flag errors, never a traceback."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.node import NodeOptions
from daemon.options import OptionsError, build_options, parse_initial_cluster
from daemon.settings import MAX_SOCKET_PATH, ManagerSettings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("data_dir", "", "NodeOptions.data_dir: must be a non-empty path"),
    ("data_dir", None, "NodeOptions.data_dir: must be a non-empty path"),
    ("data_dir", "/var/lib/a\0b", "NodeOptions.data_dir: contains a NUL byte"),
    ("socket_path", "", "NodeOptions.socket_path: must be a non-empty path"),
    ("socket_path", "/tmp/" + "s" * MAX_SOCKET_PATH, f"at most {MAX_SOCKET_PATH}: choose a shorter path"),
    ("registry_auth_file", "", "NodeOptions.registry_auth_file: must be a non-empty path"),
    ("insecure_registries", "reg:5000", "NodeOptions.insecure_registries: must be a tuple of strings"),
    ("insecure_registries", ("ok:5000", "http://reg:5000"),
     "NodeOptions.insecure_registries[1]: 'http://reg:5000': give host:port without a scheme"),
    ("insecure_registries", ("10.0.0.0/33",), "NodeOptions.insecure_registries[0]: '10.0.0.0/33' is not a CIDR"),
    ("insecure_registries", ("a b",), "NodeOptions.insecure_registries[0]: must be host:port, host or a CIDR"),
    ("runtime", "", "NodeOptions.runtime: must be the name or path of an OCI runtime binary"),
    ("runtime", "runc --debug", "NodeOptions.runtime: must be the name or path"),
    ("cgroup_parent", "/", "NodeOptions.cgroup_parent: must be a cgroup path below the root"),
    ("cgroup_parent", "orch/../x", "NodeOptions.cgroup_parent: must be a cgroup path below the root"),
    ("hostname", "", "NodeOptions.hostname: must be 1 to 253 printable characters"),
    ("hostname", "a b", "NodeOptions.hostname: must be 1 to 253 printable characters"),
    ("hostname", "h" * 254, "NodeOptions.hostname: must be 1 to 253 printable characters"),
    ("manager_settings", {"tick_interval": 0.1}, "NodeOptions.manager_settings: must be a ManagerSettings"),
    ("extra", [], "NodeOptions.extra: must be a dict"),
])
def test_node_options_name_the_bad_field(field: str, value: Any, message: str) -> None:
    kw: dict[str, Any] = {"data_dir": "/var/lib/orch", field: value}
    with pytest.raises(SettingsError) as e:
        NodeOptions(**kw)
    assert e.value.field.partition("[")[0] == field
    assert message in str(e.value)


def test_node_options_accept_what_the_daemon_runs_with() -> None:
    o = NodeOptions("/var/lib/orch", socket_path=None, insecure_registries=("reg:5000", "reg", "10.0.0.0/8"),
                    cgroup_parent="/orch/tests/", hostname="node-1.example", manager_settings=ManagerSettings())
    assert o.socket_path is None and o.runtime == "runc"
    NodeOptions("/d", socket_path="/tmp/" + "s" * (MAX_SOCKET_PATH - 5))  # exactly at the limit


@pytest.mark.parametrize(("kw", "message"), [
    ({"tick_interval": 0}, "ManagerSettings.tick_interval: must be at least 0.001 s, got 0"),
    ({"tick_interval": math.nan}, "ManagerSettings.tick_interval: must be at least 0.001 s, got nan"),
    ({"tick_interval": "0.1"}, "ManagerSettings.tick_interval: must be a number, got str '0.1'"),
    ({"election_tick": 1}, "ManagerSettings.election_tick: must be at least 2 ticks, got 1"),
    ({"election_tick": 2.5}, "ManagerSettings.election_tick: must be an integer, got float 2.5"),
    ({"snapshot_every": True}, "ManagerSettings.snapshot_every: must be an integer, got bool True"),
    ({"snapshot_every": 0}, "ManagerSettings.snapshot_every: must be at least 1 entries, got 0"),
    ({"keep_entries": -1}, "ManagerSettings.keep_entries: must be at least 0 entries, got -1"),
    ({"heartbeat_period": 0.01}, "ManagerSettings.heartbeat_period: must be at least 0.05 s, got 0.01"),
])
def test_manager_settings_name_the_bad_field(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        ManagerSettings(**kw)


def test_manager_settings_build_the_managers_settings() -> None:
    from manager.dispatcher import DispatcherSettings
    from manager.raft.driver import RaftSettings

    assert ManagerSettings().raft_settings() == RaftSettings()
    assert ManagerSettings().dispatcher_settings() == DispatcherSettings()
    s = ManagerSettings(tick_interval=0.05, election_tick=20, snapshot_every=7, keep_entries=0, heartbeat_period=1.5)
    r = s.raft_settings()
    assert (r.tick_interval, r.election_tick, r.snapshot_every, r.keep_entries) == (0.05, 20, 7, 0)
    assert s.dispatcher_settings().period == 1.5


def _flags(tmp_path: Path, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        data_dir=str(tmp_path / "data"), node_id=None, listen_addr="0.0.0.0:4242", initial_cluster="",
        as_manager=False, socket_path=str(tmp_path / "s.sock"), tick_ms=100, election_ticks=10,
        snapshot_every=10_000, keep_entries=5_000, insecure=(), registry_auth_file=None, runtime="runc",
        cgroup_parent="orch", hostname=None, heartbeat_period=5.0)
    kw.update(over)
    return kw


def test_build_options_for_a_worker_and_a_static_manager(tmp_path: Path) -> None:
    w = build_options(**_flags(tmp_path))
    assert w.manager is None and w.manager_settings == ManagerSettings(0.1, 10, 10_000, 5_000, 5.0)
    m = build_options(**_flags(tmp_path, node_id=2, initial_cluster="1=10.0.0.1:4242,2=10.0.0.2:4242"))
    assert m.manager.node_id == 2 and m.manager.initial_cluster == {1: "10.0.0.1:4242", 2: "10.0.0.2:4242"}
    assert m.manager.data_dir == str(tmp_path / "data" / "manager")
    assert m.manager.settings.tick_interval == 0.1


@pytest.mark.parametrize(("over", "message", "param"), [
    ({"initial_cluster": "x"}, "member 1 ('x'): expected ID=HOST:PORT with ID >= 1", "--initial-cluster"),
    ({"initial_cluster": "1=a:1,1=b:2", "node_id": 1}, "node id 1 listed twice", "--initial-cluster"),
    ({"initial_cluster": "1=a:1", "node_id": 2}, "--initial-cluster does not list this node's id 2", None),
    ({"listen_addr": "0.0.0.0:99999"}, "bad port in address '0.0.0.0:99999'", None),
    ({"as_manager": True}, "--node-id is required for a manager", None),
    ({"hostname": "a b"}, "must be 1 to 253 printable characters without spaces, got 'a b'", "--hostname"),
    ({"insecure": ("https://r",)}, "'https://r': give host:port without a scheme", "--insecure-registry"),
])
def test_build_options_errors_name_the_flag(tmp_path: Path, over: dict[str, Any], message: str,
                                            param: str | None) -> None:
    with pytest.raises(OptionsError) as e:
        build_options(**_flags(tmp_path, **over))
    assert message in str(e.value) and e.value.param == param


def test_parse_initial_cluster() -> None:
    assert parse_initial_cluster(" 1=a:1, 2=[::1]:2 ,") == {1: "a:1", 2: "[::1]:2"}
    with pytest.raises(OptionsError, match="member 2"):
        parse_initial_cluster("1=a:1,0=b:2")


@pytest.mark.parametrize(("args", "expected"), [
    (["--socket", "/tmp/" + "s" * 200], "Invalid value for --socket: the path is 205 bytes long; a unix socket path has at most 107"),
    (["--insecure-registry", "http://reg:5000"], "Invalid value for --insecure-registry: 'http://reg:5000': give host:port"),
    (["--cgroup-parent", ".."], "Invalid value for --cgroup-parent: must be a cgroup path below the root"),
    (["--initial-cluster", "nope"], "Invalid value for --initial-cluster: member 1 ('nope')"),
    (["--manager"], "--node-id is required for a manager"),
])
def test_orch_daemon_reports_bad_flags_without_a_traceback(tmp_path: Path, args: list[str], expected: str) -> None:
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "cli.main", "daemon", "--data-dir", str(data), "--socket", str(tmp_path / "s.sock"),
            *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode in (1, 2), r.stderr
    assert "Traceback" not in r.stderr
    assert expected in " ".join(r.stderr.split()), r.stderr
    assert not data.exists()  # refused before anything was made
