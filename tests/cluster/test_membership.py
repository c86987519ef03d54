"""Manager membership with real processes: a new manager catches up as a
learner (receiving a snapshot over the peer stream), becomes a voter, serves
writes, and is removed again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.harness.managers import ManagerCluster, ManagerProc, free_port


def orch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args],
                          capture_output=True, text=True, timeout=90)


def test_add_learner_promote_and_remove() -> None:
    with ManagerCluster(3) as cl:
        leader = cl.leader(timeout=15)
        for i in range(20):
            r = orch("--host", leader.addr, "config", "create", f"before-{i}", "-")
            assert r.returncode == 0, r.stderr
        port = free_port()
        d = os.path.join(cl.base_dir or "", "m4")
        os.makedirs(d)
        new = ManagerProc(
            4, f"127.0.0.1:{port}", d, os.path.join(d, "orch.sock"), os.path.join(d, "daemon.log"),
            [sys.executable, "-m", "cli.main", "daemon", "--manager", "--node-id", "4",
             "--data-dir", d, "--listen-addr", f"127.0.0.1:{port}", "--socket", os.path.join(d, "orch.sock")],
        )
        cl.nodes.append(new)  # so the cluster's cleanup stops it too
        new.start()
        time.sleep(0.5)
        # A follower refuses membership changes with a pointer to the leader.
        follower = next(n for n in cl.nodes[:3] if n.node_id != leader.node_id)
        r = orch("--host", follower.addr, "cluster", "member", "add", "4", new.addr)
        assert r.returncode != 0 and "leader" in r.stderr, r.stderr
        r = orch("--host", leader.addr, "cluster", "member", "add", "4", new.addr)
        assert r.returncode == 0, r.stderr + new.log_tail()
        st = json.loads(orch("--host", leader.addr, "cluster", "status", "--format", "json").stdout)["raft"]
        assert {m["id"]: m["suffrage"] for m in st["members"]} == {1: "voter", 2: "voter", 3: "voter", 4: "voter"}
        # The new manager has the whole state and serves (forwarded) writes.
        r = orch("--host", new.addr, "config", "create", "via-new", "-")
        assert r.returncode == 0, r.stderr
        names = {c["spec"]["name"] for c in json.loads(orch("--host", new.addr, "config", "ls", "--format", "json").stdout)}
        assert {f"before-{i}" for i in range(20)} | {"via-new"} <= names
        # Remove it again; the three carry on.
        r = orch("--host", leader.addr, "cluster", "member", "rm", "4")
        assert r.returncode == 0, r.stderr
        st = json.loads(orch("--host", leader.addr, "cluster", "status", "--format", "json").stdout)["raft"]
        assert sorted(m["id"] for m in st["members"]) == [1, 2, 3]
        r = orch("--host", leader.addr, "config", "create", "after-rm", "-")
        assert r.returncode == 0, r.stderr
        r = orch("--host", leader.addr, "cluster", "member", "rm", "9")
        assert r.returncode != 0 and "no manager with id 9" in r.stderr
