"""The control API and the CLI end to end against 3 real manager processes:
cluster status, config create/ls/inspect/rm through leader and followers,
and bad requests that change nothing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.managers import ManagerCluster, ManagerProc


@pytest.fixture(scope="module")
def cluster() -> Iterator[ManagerCluster]:
    with ManagerCluster(3) as cl:
        cl.leader(timeout=15)
        yield cl


def orch(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def follower(cl: ManagerCluster) -> ManagerProc:
    lid = cl.leader().node_id
    return next(n for n in cl.nodes if n.node_id != lid)


def post(n: ManagerProc, path: str, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(
        n.url + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def names(n: ManagerProc) -> list[str]:
    return sorted(c["spec"]["name"] for c in n.get("/v1/configs", timeout=10))


def test_cluster_status_shows_one_leader_and_members(cluster: ManagerCluster) -> None:
    leaders = set()
    for n in cluster.nodes:
        r = orch("--host", n.addr, "cluster", "status", "--format", "json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)["raft"]
        leaders.add(st["leader"])
        assert sorted(m["id"] for m in st["members"]) == [1, 2, 3]
        assert all(m["suffrage"] == "voter" for m in st["members"])
        assert st["applied"] >= 1 and st["commit"] >= st["applied"] - 0
    assert len(leaders) == 1 and leaders.pop() in (1, 2, 3)
    r = orch("--host", cluster.nodes[0].addr, "cluster", "status")
    assert r.returncode == 0 and "leader:" in r.stdout and "127.0.0.1" in r.stdout


def test_config_lifecycle_through_a_follower(cluster: ManagerCluster, tmp_path: Any) -> None:
    f = follower(cluster)
    src = tmp_path / "app.conf"
    src.write_bytes(b"listen 8080\n")
    r = orch("--host", f.addr, "config", "create", "app-conf", str(src), "-l", "env=test")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 25
    # Visible at once on every node (reads are linearizable).
    for n in cluster.nodes:
        assert "app-conf" in names(n)
    r = orch("--host", cluster.nodes[0].addr, "config", "inspect", "app-conf")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)[0]
    assert obj["id"] == cid and obj["spec"]["labels"] == {"env": "test"}
    assert base64.b64decode(obj["spec"]["data"]) == b"listen 8080\n"
    assert obj["meta"]["version"] > 1
    r = orch("--host", cluster.nodes[1].addr, "config", "inspect", cid[:8], "--pretty")
    assert r.returncode == 0 and "listen 8080" in r.stdout
    r = orch("--host", cluster.nodes[2].addr, "config", "ls")
    assert r.returncode == 0 and "app-conf" in r.stdout
    # stdin
    r = orch("--host", f.addr, "config", "create", "from-stdin", "-", stdin=b"x=1")
    assert r.returncode == 0, r.stderr
    r = orch("--host", f.addr, "config", "rm", "app-conf", "from-stdin")
    assert r.returncode == 0, r.stderr
    for n in cluster.nodes:
        assert "app-conf" not in names(n)
    r = orch("--host", f.addr, "config", "inspect", "app-conf")
    assert r.returncode != 0 and "no config with id or name 'app-conf'" in r.stderr


def test_unix_socket(cluster: ManagerCluster) -> None:
    n = cluster.nodes[0]
    assert oct(os.stat(n.socket_path).st_mode & 0o777) == "0o600"
    r = orch("--socket", n.socket_path, "config", "ls", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)


@pytest.mark.parametrize(
    "body,field,needle",
    [
        ({"name": "bad name!", "data": ""}, "name", "name"),
        ({"name": "", "data": ""}, "name", "name"),
        ({"name": "ok", "data": "%%%"}, "data", "base64"),
        ({"name": "ok", "data": 5}, "data", "base64"),
        ({"name": "ok", "data": "", "bogus": 1}, "bogus", "unknown field"),
        ({"name": "ok", "labels": {"": "v"}, "data": ""}, "labels", "label"),
        ({"name": "big", "data": base64.b64encode(b"x" * (600 * 1024)).decode()}, "data", "500"),
    ],
)
def test_bad_create_is_refused_and_writes_nothing(
    cluster: ManagerCluster, body: dict[str, Any], field: str, needle: str
) -> None:
    n = cluster.nodes[1]
    before = names(n)
    status, resp = post(n, "/v1/configs", body)
    assert status == 400, resp
    err = resp["error"]
    assert field in err.get("field", "") or field in err["message"], err
    assert needle.lower() in err["message"].lower(), err
    assert names(n) == before


def test_malformed_json_and_duplicate_name(cluster: ManagerCluster) -> None:
    n = cluster.nodes[0]
    status, resp = post(n, "/v1/configs", None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in resp["error"]["message"]
    status, _ = post(n, "/v1/configs", {"name": "dup", "data": ""})
    assert status == 201
    before = names(n)
    status, resp = post(follower(cluster), "/v1/configs", {"name": "dup", "data": "eA=="})
    assert status == 409 and "dup" in resp["error"]["message"], resp
    assert names(n) == before


def test_cli_reports_unreachable_daemon(tmp_path: Any) -> None:
    r = orch("--socket", str(tmp_path / "nope.sock"), "config", "ls")
    assert r.returncode == 1
    assert "cannot reach the orch daemon" in r.stderr
