"""A fleet of hosts, each with an overlay dataplane, and "containers" (plain
network namespaces, or processes in network namespaces of their own) for the
dataplane's real-kernel tests.

Tests are synchronous and drive the asyncio facade through one
`asyncio.Runner` per test (the way the agent's single loop would), so that
they can use pyroute2's synchronous API and subprocesses freely in between.
`world()` cleans up everything on exit, also after a failure: the dataplanes'
teardown, the container processes, and the fleet (whose teardown also removes
any namespace with a host's prefix)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from pyroute2 import IPRoute, netns

from overlay_net import Action, Egress, Endpoint, Network, NetworkDataplane, NodeState, Peer
from tests.harness.fleet import Fleet, Host

EGRESS = Egress("172.30.0.0/24")
NETNS_DIR = "/run/netns"


@dataclass
class Container:
    name: str
    host: Host
    netns: str  # path
    proc: subprocess.Popen[bytes] | None = None

    def run(self, argv: list[str], timeout: float = 10.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.netns}", "--", *argv], input=input, capture_output=True,
                              text=True, timeout=timeout)

    def ping(self, ip: str | IPv4Address, wait: int = 2) -> bool:
        return self.run(["busybox", "ping", "-c", "1", "-W", str(wait), str(ip)], timeout=wait + 5).returncode == 0

    def tcp(self, ip: str | IPv4Address, port: int = 7000, data: str = "hello", wait: int = 2) -> str:
        """What a TCP server at ip:port answers to data (busybox nc)."""
        return self.run(["busybox", "nc", "-w", str(wait), str(ip), str(port)], input=data + "\n",
                        timeout=wait + 5).stdout.strip()

    def serve(self, reply_argv: list[str], port: int = 7000) -> subprocess.Popen[bytes]:
        """Start a persistent busybox nc server running reply_argv per connection."""
        p = subprocess.Popen(["nsenter", f"--net={self.netns}", "--", "busybox", "nc", "-ll", "-p", str(port),
                              "-e", *reply_argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        return p

    def links(self) -> list[Any]:
        with IPRoute(netns=self.netns) as ipr:
            return list(ipr.get_links())

    def default_routes(self) -> list[Any]:
        with IPRoute(netns=self.netns) as ipr:
            return [r for r in ipr.get_routes(family=2, table=254) if r["dst_len"] == 0]


@dataclass
class World:
    fleet: Fleet
    runner: asyncio.Runner
    dps: dict[str, NetworkDataplane] = field(default_factory=dict)
    containers: list[Container] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def host(self, name: str) -> Host:
        return self.fleet[name]

    def dataplane(self, host: str) -> NetworkDataplane:
        if host not in self.dps:
            h = self.host(host)
            self.dps[host] = NetworkDataplane(h.name_prefix, h.addr, host_netns=h.netns_path)
        return self.dps[host]

    def container(self, host: str, name: str) -> Container:
        """A plain named namespace (lo up), removed by the fleet's teardown too."""
        h = self.host(host)
        ns = f"{h.name_prefix}{name}"
        netns.create(ns)
        c = Container(name, h, f"{NETNS_DIR}/{ns}")
        self.containers.append(c)
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return c

    def process_container(self, host: str, name: str, argv: list[str]) -> Container:
        """A process in a network namespace of its own (unshared from the
        host's): the engine's /proc/PID/ns/net case."""
        h = self.host(host)
        p = subprocess.Popen(["nsenter", f"--net={h.netns_path}", "--", "unshare", "--net", "--", *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        # nsenter and unshare exec in place: p.pid ends up running argv in a new netns.
        host_ino = os.stat(h.netns_path).st_ino
        deadline = time.monotonic() + 5
        path = f"/proc/{p.pid}/ns/net"
        while os.stat(path).st_ino == host_ino or _comm(p.pid) != os.path.basename(argv[0]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv} did not start in a new netns")
            time.sleep(0.01)
        c = Container(name, h, path, p)
        self.containers.append(c)
        return c

    def state(self, host: str, networks: list[Network], endpoints: list[Endpoint], peers: list[Peer],
              egress: Egress = EGRESS) -> NodeState:
        h = self.host(host)
        return NodeState(prefix=h.name_prefix, underlay_addr=IPv4Address(h.addr), networks=tuple(networks),
                         endpoints=tuple(endpoints), peers=tuple(peers), egress=egress)

    def apply(self, host: str, state: NodeState) -> list[Action]:
        return self.runner.run(self.dataplane(host).apply(state))

    def apply_all(self, networks: list[Network], placement: dict[str, list[Endpoint]],
                  egress: Egress = EGRESS) -> dict[str, list[Action]]:
        """Give every host its state, computed from where each endpoint runs
        (what the managers' tables would say), applied concurrently."""
        states = self.states(networks, placement, egress)

        async def go() -> list[list[Action]]:
            return await asyncio.gather(*(self.dataplane(h).apply(s) for h, s in states.items()))

        return dict(zip(states, self.runner.run(go())))

    def states(self, networks: list[Network], placement: dict[str, list[Endpoint]],
               egress: Egress = EGRESS) -> dict[str, NodeState]:
        out = {}
        for h in placement:
            peers = [Peer(e.network_id, e.address.ip, IPv4Address(self.host(other).addr), e.mac)
                     for other, eps in placement.items() if other != h for e in eps]
            out[h] = self.state(h, networks, placement[h], peers, egress)
        return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@contextmanager
def world(fleet: Fleet) -> Iterator[World]:
    runner = asyncio.Runner()
    w = World(fleet, runner)
    try:
        yield w
    finally:
        errors: list[str] = []
        for name, dp in w.dps.items():
            try:
                runner.run(dp.teardown())
                runner.run(dp.close())
            except Exception as e:  # noqa: BLE001  (keep cleaning)
                errors.append(f"{name}: {e}")
        for p in w.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
        runner.close()
        if errors:
            print("overlay teardown problems:", errors, file=sys.stderr)


# A raw ICMP echo with DF set (IP_PMTUDISC_DO): prints "ok <bytes>" for a
# full-size reply, "emsgsize" when the local MTU refuses it, or "timeout".
DF_PING = textwrap.dedent("""
    import os, socket, struct, sys, time
    dst, size = sys.argv[1], int(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
    def csum(b):
        if len(b) % 2: b += b"\\0"
        t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
        t = (t >> 16) + (t & 0xffff); t += t >> 16
        return ~t & 0xffff
    ident = os.getpid() & 0xffff
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, 1) + payload
    try:
        s.sendto(pkt, (dst, 0))
    except OSError as e:
        print("emsgsize" if e.errno == 90 else f"error {e}"); sys.exit(0)
    s.settimeout(3)
    end = time.time() + 3
    while time.time() < end:
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            break
        ihl = (data[0] & 15) * 4
        t, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if t == 0 and rid == ident:
            print("ok", len(data) - ihl - 8, "df" if struct.unpack("!H", data[6:8])[0] & 0x4000 else "nodf")
            sys.exit(0)
    print("timeout")
""")


def df_ping(c: Container, dst: str | IPv4Address, size: int) -> str:
    return c.run([sys.executable, "-c", DF_PING, str(dst), str(size)], timeout=15).stdout.strip()


def snmp_ip(netns_path: str) -> dict[str, int]:
    """The Ip: counters of /proc/net/snmp in a namespace."""
    out = subprocess.run(["nsenter", f"--net={netns_path}", "--", "cat", "/proc/net/snmp"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.splitlines()
    names, values = [line.split()[1:] for line in out if line.startswith("Ip:")][:2]
    return dict(zip(names, map(int, values)))


def fdb_and_neigh(sandbox_ns: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """({(mac, dst)}, {(ip, mac)}) on a sandbox's vxlan0, read directly."""
    with IPRoute(netns=sandbox_ns) as ipr:
        idx = ipr.link_lookup(ifname="vxlan0")
        if not idx:
            return set(), set()
        fdb = {(m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST")) for m in ipr.fdb("dump", ifindex=idx[0])
               if m["ifindex"] == idx[0] and m.get_attr("NDA_DST")}
        neigh = {(m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")) for m in ipr.neigh("dump", ifindex=idx[0], family=2)
                 if m["ifindex"] == idx[0] and m.get_attr("NDA_LLADDR")}
        return fdb, neigh
