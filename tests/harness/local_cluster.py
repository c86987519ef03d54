"""Bring up (or tear down) a local 3-manager cluster on loopback for a person
to try: `python3 -m tests.harness.local_cluster up|down|status`.

State lives in ./.fleet (data dirs, logs, pids), so `down` finds what `up`
started even from another shell.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

from .managers import ManagerCluster

STATE = os.path.abspath(".fleet")
BASE_PORT = 4242


def up(size: int) -> None:
    if os.path.exists(os.path.join(STATE, "cluster.json")):
        sys.exit(f"a local cluster is already up (state in {STATE}); run `make cluster-down` first")
    os.makedirs(STATE, exist_ok=True)
    cl = ManagerCluster(size, base_dir=STATE)
    # Fixed, memorable ports: 4242, 4243, ...
    cluster = ",".join(f"{i + 1}=127.0.0.1:{BASE_PORT + i}" for i in range(size))
    for i, n in enumerate(cl.nodes):
        n.addr = f"127.0.0.1:{BASE_PORT + i}"
        a = n.args
        a[a.index("--listen-addr") + 1] = n.addr
        a[a.index("--initial-cluster") + 1] = cluster
    cl.start()
    leader = cl.leader(timeout=20)
    with open(os.path.join(STATE, "cluster.json"), "w") as f:
        json.dump([{"id": n.node_id, "addr": n.addr, "pid": n.proc.pid if n.proc else 0,
                    "socket": n.socket_path} for n in cl.nodes], f)
    print(f"{size} managers up; leader is node {leader.node_id} ({leader.addr})")
    print("try:")
    print(f"  orch --host {cl.nodes[0].addr} cluster status")
    print(f"  echo hello | orch --host {cl.nodes[1].addr} config create greeting -")
    print(f"  orch --host {cl.nodes[2].addr} config ls")
    print(f"  export ORCH_HOST={cl.nodes[0].addr}   # then plain `orch ...`")
    print("logs in .fleet/m*/daemon.log; stop with `make cluster-down`")


def down() -> None:
    path = os.path.join(STATE, "cluster.json")
    if os.path.exists(path):
        with open(path) as f:
            for n in json.load(f):
                try:
                    os.killpg(n["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
        time.sleep(0.5)
        with open(path) as f:
            for n in json.load(f):
                try:
                    os.killpg(n["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
    shutil.rmtree(STATE, ignore_errors=True)
    print("local cluster down")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--managers", type=int, default=3)
    a = ap.parse_args()
    up(a.managers) if a.action == "up" else down()


if __name__ == "__main__":
    main()
