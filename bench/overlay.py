"""Overlay throughput: iperf3 between two containers on different fleet hosts
over the VXLAN overlay, against iperf3 between the two hosts' underlay
addresses, on the same machine and the same underlay bridge.

Two simulated hosts (tests/harness/fleet.py: network namespaces on one
bridge), each programmed by its own overlay_net.NetworkDataplane; the
"containers" are network namespaces. Everything runs inside namespaces the
run makes and is removed at the end.

Prints Gbit/s for the underlay and the overlay (TCP, one stream, median of
--runs runs of --seconds each) and the ratio overlay/underlay; the goal is
>= 0.85. On one machine both paths share the CPU, so the ratio mostly
measures the per-packet cost of encapsulation (and the smaller MSS).

    python3 bench/overlay.py                # 3 runs x 5 s
    python3 bench/overlay.py --runs 1 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyroute2 import IPRoute, netns  # noqa: E402

from overlay_net import Egress, Endpoint, Network, NetworkDataplane, NodeState, Peer  # noqa: E402
from tests.harness.fleet import Fleet, cleanup_stale  # noqa: E402

PORT = 5201


def run_iperf(server_ns: str, client_ns: str, server_ip: str, seconds: int) -> float:
    """Gbit/s received by the server, one TCP stream."""
    srv = subprocess.Popen(["nsenter", f"--net={server_ns}", "--", "iperf3", "-s", "-1", "-p", str(PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(100):  # until the server listens
            probe = subprocess.run(["nsenter", f"--net={server_ns}", "--", "ss", "-ltnH", f"sport = :{PORT}"],
                                   capture_output=True, text=True, timeout=5)
            if probe.stdout.strip():
                break
            time.sleep(0.05)
        cp = subprocess.run(["nsenter", f"--net={client_ns}", "--", "iperf3", "-c", server_ip, "-p", str(PORT),
                             "-t", str(seconds), "-J"], capture_output=True, text=True, timeout=seconds + 30)
        if cp.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {cp.stdout[-500:]} {cp.stderr[-500:]}")
        return json.loads(cp.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        srv.kill()
        srv.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    if shutil.which("iperf3") is None:
        sys.exit("needs iperf3 (apt-get install iperf3)")
    cleanup_stale()
    with Fleet("b" + secrets.token_hex(3), ["a", "b"]) as fleet:
        a, b = fleet["a"], fleet["b"]
        boxes = {}
        for h in (a, b):
            name = f"{h.name_prefix}box"
            netns.create(name)
            with IPRoute(netns=name) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            boxes[h.name] = f"/run/netns/{name}"
        net = Network("bench", 4789, "10.90.0.0/24")
        eps = {"a": Endpoint("ea", "bench", boxes["a"], "eth0", "10.90.0.2/24"),  # type: ignore[arg-type]
               "b": Endpoint("eb", "bench", boxes["b"], "eth0", "10.90.0.3/24")}  # type: ignore[arg-type]

        async def program() -> None:
            for h, other in ((a, b), (b, a)):
                async with NetworkDataplane(h.name_prefix, h.addr, host_netns=h.netns_path) as dp:
                    peer = Peer("bench", eps[other.name].address.ip, other.addr)  # type: ignore[arg-type]
                    await dp.apply(NodeState(h.name_prefix, h.addr, (net,), (eps[h.name],), (peer,),  # type: ignore[arg-type]
                                             Egress("172.30.0.0/24")))

        asyncio.run(program())
        under, over = [], []
        for i in range(args.runs):
            under.append(run_iperf(b.netns_path, a.netns_path, b.addr, args.seconds))
            over.append(run_iperf(boxes["b"], boxes["a"], "10.90.0.3", args.seconds))
            print(f"run {i + 1}: underlay {under[-1]:.2f} Gbit/s, overlay {over[-1]:.2f} Gbit/s", flush=True)
        u, o = statistics.median(under), statistics.median(over)
        print(f"underlay (host a -> host b, MTU 1500):       {u:.2f} Gbit/s")
        print(f"overlay  (container a -> container b, 1450): {o:.2f} Gbit/s")
        print(f"ratio overlay/underlay: {o / u:.2f} (goal >= 0.85)")
        # The fleet's teardown removes the hosts' namespaces, and with them
        # the sandboxes (named after the hosts' prefixes) and the boxes.


if __name__ == "__main__":
    main()
