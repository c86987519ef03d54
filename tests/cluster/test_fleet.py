"""The cluster on a multi-host fleet: every host a network namespace with its
own `orch daemon` (tests/harness/fleet.py). Init and join with tokens over
mutual TLS, refusals, leader failover, partitions, heartbeats, node
management, quorum loss and --force-new-cluster.

The tests share one fleet and run in file order: each leaves the cluster as
the next one expects it (3 managers m1-m3, 2 workers w1-w2, all READY).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fleet import Fleet, fleet_fixture
from tests.harness.fleet_cluster import PORT, OrchFleet
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.root, pytest.mark.multihost]

HB = 0.5  # heartbeat period: DOWN after ~1.5 s

fleet = fleet_fixture(("m1", "m2", "m3", "w1", "w2", "x"), scope="module")

ALL = {"m1": "ready", "m2": "ready", "m3": "ready", "w1": "ready", "w2": "ready"}


@pytest.fixture(scope="module")
def of(fleet: Fleet) -> Iterator[OrchFleet]:
    o = OrchFleet(fleet, heartbeat=HB)
    try:
        for name in ("m1", "m2", "m3", "w1", "w2", "x"):
            o.start(fleet[name])
        yield o
    finally:
        o.stop_all()


def leader(of: OrchFleet, via: str) -> str:
    nodes = of.json(of.fleet[via], "node", "ls")
    return next(n["description"]["hostname"] for n in nodes if (n.get("manager_status") or {}).get("leader"))


def test_init_and_join_five_nodes(of: OrchFleet) -> None:
    f = of.fleet
    of.init_and_join([f["m1"], f["m2"], f["m3"]], [f["w1"], f["w2"]])
    nodes = of.wait_nodes(f["m1"], ALL)
    assert len(nodes) == 5
    roles = {n["description"]["hostname"]: n["role"] for n in nodes}
    assert roles == {"m1": "manager", "m2": "manager", "m3": "manager", "w1": "worker", "w2": "worker"}
    # Every manager answers, and sees the same cluster.
    for m in ("m2", "m3"):
        assert len(of.json(f[m], "node", "ls")) == 5
    out = of.orch(f["m2"], "node", "ls").stdout
    assert "Leader" in out and out.count("Reachable") == 2
    # A worker is not a manager.
    r = of.orch(f["w1"], "node", "ls", check=False)
    assert r.returncode != 0 and "not a manager" in r.stderr


def test_refusals(of: OrchFleet) -> None:
    f = of.fleet
    m1 = f"{f['m1'].addr}:{PORT}"
    good = of.orch(f["m1"], "join-token", "-q", "worker").stdout.strip()
    digest = good.split("-")[2]
    # A wrong secret for this CA.
    r = of.orch(f["x"], "join", "--token", f"ORCHTKN-1-{digest}-{'0' * 32}", m1, check=False)
    assert r.returncode != 0 and "invalid join token" in r.stderr, r.stderr
    # A token for another CA: the joining node refuses the manager (pinning).
    r = of.orch(f["x"], "join", "--token", f"ORCHTKN-1-{'a' * 64}-{'0' * 32}", m1, check=False)
    assert r.returncode != 0 and "does not match the join token" in r.stderr, r.stderr
    # Garbage.
    r = of.orch(f["x"], "join", "--token", "SWMTKN-1-abc", m1, check=False)
    assert r.returncode != 0 and "--token" in r.stderr and "ORCHTKN" in r.stderr, r.stderr
    # A rotated-out token.
    of.orch(f["m1"], "join-token", "--rotate", "worker")
    r = of.orch(f["x"], "join", "--token", good, m1, check=False)
    assert r.returncode != 0 and "rotated" in r.stderr, r.stderr
    # A client without a certificate gets nothing but the CA and the join call.
    code = f"""
import ssl, urllib.request, urllib.error
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
for path in ("/v1/nodes", "/v1/dispatcher/session", "/raft/stream", "/v1/ca"):
    try:
        r = urllib.request.urlopen("https://{m1}" + path, context=ctx, timeout=5)
        print(path, r.status)
    except urllib.error.HTTPError as e:
        print(path, e.code, e.read().decode()[:200])
"""
    out = f["x"].run([sys.executable, "-c", code], timeout=30).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    for p in ("/v1/nodes", "/v1/dispatcher/session", "/raft/stream"):
        assert lines[p].startswith("401") and "certificate" in lines[p], out
    assert lines["/v1/ca"].startswith("200")
    # A removed node's certificate is refused: join x, take it out, try with its cert.
    new = of.orch(f["m1"], "join-token", "-q", "worker").stdout.strip()
    of.orch(f["x"], "join", "--token", new, m1)
    of.wait_nodes(f["m1"], {"x": "ready"})
    xid = next(n["id"] for n in of.json(f["m1"], "node", "ls") if n["description"]["hostname"] == "x")
    r = of.orch(f["m1"], "node", "rm", "x", check=False)
    assert r.returncode != 0 and "READY" in r.stderr  # a live node needs --force (or leave first)
    of.orch(f["m1"], "node", "rm", "--force", "x")
    certs = Path(f["x"].data_dir) / "cluster" / "certs"
    code = f"""
import ssl, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile="{certs}/ca.crt"); ctx.check_hostname = False
ctx.load_cert_chain("{certs}/node.crt", "{certs}/node.key")
try:
    urllib.request.urlopen("https://{m1}/v1/certs/renew", data=b"{{}}", context=ctx, timeout=5)
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode()[:300])
"""
    out = f["x"].run([sys.executable, "-c", code], timeout=30).stdout
    assert out.startswith("403") and f"node {xid} was removed" in out, out
    assert xid not in {n["id"] for n in of.json(f["m1"], "node", "ls")}
    of.orch(f["x"], "leave", "--force")


def test_leader_kill9_failover_and_rejoin(of: OrchFleet) -> None:
    f = of.fleet
    old = leader(of, "m1")
    others = [m for m in ("m1", "m2", "m3") if m != old]
    f[old].kill9()
    t0 = time.monotonic()
    new = wait_for(lambda: _leader_or_none(of, others[0]), 10, "a new leader")
    took = time.monotonic() - t0
    assert new in others and took < 3.0, (new, took)
    assert len(of.json(f[others[1]], "node", "ls")) == 5
    of.orch(f[others[0]], "config", "create", "after-failover", "-", input="x")
    of.start(f[old])
    of.wait_nodes(f[others[0]], ALL)
    wait_for(lambda: "after-failover" in of.orch(f[old], "config", "ls").stdout, 15, "the old leader catching up")
    assert "(follower)" in of.orch(f[old], "cluster", "status").stdout  # back, as a follower


def _leader_or_none(of: OrchFleet, via: str) -> str | None:
    r = of.orch(of.fleet[via], "node", "ls", "--format", "json", check=False, timeout=20)
    if r.returncode != 0:
        return None
    for n in json.loads(r.stdout):
        ms = n.get("manager_status") or {}
        if ms.get("leader") and ms.get("reachable"):
            return n["description"]["hostname"]
    return None


def test_partitioned_minority_cannot_commit_then_catches_up(of: OrchFleet) -> None:
    f = of.fleet
    lead = leader(of, "m1")
    minority = next(m for m in ("m1", "m2", "m3") if m != lead)
    rest = [h for h in ("m1", "m2", "m3", "w1", "w2") if h != minority]
    f.isolate(f[minority])
    try:
        r = of.orch(f[minority], "config", "create", "from-minority", "-", input="x", check=False, timeout=60)
        assert r.returncode != 0, "a partitioned minority committed a write"
        # The caller is told the outcome is unknown (a proposal forwarded before
        # the cut may still be delivered after healing, as with etcd).
        assert "no leader" in r.stderr or "may or may not" in r.stderr, r.stderr
        of.orch(f[lead], "config", "create", "from-majority", "-", input="y")
        assert "from-minority" not in of.orch(f[lead], "config", "ls").stdout
        assert "from-majority" not in of.orch(f[minority], "config", "ls", check=False).stdout
    finally:
        f.heal()
    wait_for(lambda: "from-majority" in of.orch(f[minority], "config", "ls", check=False).stdout, 20,
         "the healed minority catching up")
    of.wait_nodes(f[rest[0]], ALL)


def test_paused_worker_goes_down_and_comes_back(of: OrchFleet) -> None:
    f = of.fleet
    f["w2"].pause()
    t0 = time.monotonic()
    try:
        of.wait_nodes(f["m1"], {"w2": "down"}, timeout=15)
        took = time.monotonic() - t0
        assert 2 * HB <= took <= 3 * HB + 3.0, took  # about three heartbeat periods
    finally:
        f["w2"].resume()
    of.wait_nodes(f["m1"], ALL, timeout=15)


def test_node_management_round_trips(of: OrchFleet) -> None:
    f = of.fleet
    m = f["m1"]
    of.orch(m, "node", "update", "--availability", "drain", "--label-add", "zone=eu", "--label-add", "ssd", "w1")
    n = json.loads(of.orch(m, "node", "inspect", "w1").stdout)[0]
    assert n["spec"]["availability"] == "drain" and n["spec"]["labels"] == {"zone": "eu", "ssd": ""}
    of.orch(m, "node", "update", "--availability", "active", "--label-rm", "ssd", "w1")
    n = json.loads(of.orch(m, "node", "inspect", "w1").stdout)[0]
    assert n["spec"]["availability"] == "active" and n["spec"]["labels"] == {"zone": "eu"}
    r = of.orch(m, "node", "update", "--label-rm", "nope", "w1", check=False)
    assert r.returncode != 0 and "no label 'nope'" in r.stderr
    # promote a worker, then demote it again
    of.orch(m, "node", "promote", "w1")
    nodes = of.wait_nodes(m, ALL)
    assert {x["description"]["hostname"]: x["role"] for x in nodes}["w1"] == "manager"
    assert of.orch(f["w1"], "node", "ls").returncode == 0  # it serves the control API now
    of.orch(m, "node", "demote", "w1")
    nodes = of.wait_nodes(m, ALL)
    assert {x["description"]["hostname"]: x["role"] for x in nodes}["w1"] == "worker"
    wait_for(lambda: of.orch(f["w1"], "node", "ls", check=False).returncode != 0, 20, "w1 to stop managing")


def test_quorum_loss_refusal_and_force_new_cluster(of: OrchFleet) -> None:
    f = of.fleet
    lead = leader(of, "m1")
    down = next(m for m in ("m1", "m2", "m3") if m != lead)
    other = next(m for m in ("m1", "m2", "m3") if m not in (lead, down))
    f[down].kill9()
    wait_for(lambda: any(n["description"]["hostname"] == down and not n["manager_status"]["reachable"]
                     for n in of.json(f[lead], "node", "ls")), 15, f"{down} unreachable")
    # Demoting a healthy manager now would leave 2 voters with 1 reachable: refused.
    r = of.orch(f[lead], "node", "demote", other, check=False)
    assert r.returncode != 0 and "quorum" in r.stderr and "--force" in r.stderr, r.stderr
    # Lose quorum: with two of three managers gone, nothing commits.
    f[other].kill9()
    r = of.orch(f[lead], "config", "create", "no-quorum", "-", input="x", check=False, timeout=60)
    assert r.returncode != 0
    # Recover on the survivor: state kept, writes work, then rebuild.
    of.orch(f[lead], "init", "--force-new-cluster")
    assert "after-failover" in of.orch(f[lead], "config", "ls").stdout
    of.orch(f[lead], "config", "create", "after-recovery", "-", input="z")
    nodes = of.json(f[lead], "node", "ls")
    assert [x["description"]["hostname"] for x in nodes if x["role"] == "manager"] == [lead]
    # The old managers come back with a fresh state and join as workers.
    for h in (down, other):
        f[h].stop()
        shutil.rmtree(f[h].data_dir)
        of.start(f[h])
    tok = of.orch(f[lead], "join-token", "-q", "worker").stdout.strip()
    for h in (down, other):
        of.orch(f[h], "join", "--token", tok, "--listen-addr", f"{f[h].addr}:{PORT}",
                "--advertise-addr", f"{f[h].addr}:{PORT}", f"{f[lead].addr}:{PORT}")
    wait_for(lambda: sum(1 for n in of.json(f[lead], "node", "ls") if n["status"]["state"] == "ready") >= 5, 30,
         "the rebuilt cluster")
