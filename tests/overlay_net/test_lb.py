"""Load balancing tables on real namespaces: rendering (pure), then a client
namespace whose table balances a virtual IP over two backend addresses of a
server namespace, written through `NetworkDataplane.balance`."""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from overlay_net import lb
from overlay_net.netlink import entered

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, nftables)")


# -- rendering -------------------------------------------------------------------


def test_vip_rules_and_empty_vips_reject() -> None:
    b = lb.Balancer(vips=(lb.VirtualService("10.0.1.3", ()), lb.VirtualService("10.0.1.2", ("10.0.1.6", "10.0.1.5"))))
    assert lb.rules(b) == [
        ("output", "ip daddr 10.0.1.2 dnat to numgen random mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 }"),
        ("vip_reject", "ip daddr { 10.0.1.3 } reject"),
    ]
    first = lb.script("t", b, declare=True)
    assert first.startswith("table ip t {") and "hook output priority -100" in first
    later = lb.script("t", b, declare=False)
    assert "hook" not in later and later.startswith("flush chain ip t output\n")
    # Order of backends and services does not change the fingerprint.
    same = lb.Balancer(vips=(lb.VirtualService("10.0.1.2", ("10.0.1.5", "10.0.1.6")), lb.VirtualService("10.0.1.3")))
    assert lb.fingerprint(same) == lb.fingerprint(b)
    assert lb.fingerprint(lb.Balancer(vips=(lb.VirtualService("10.0.1.2", ("10.0.1.5",)),))) != lb.fingerprint(b)


def test_ingress_rules() -> None:
    b = lb.Balancer(ports=(lb.IngressPort("udp", 53), lb.IngressPort("tcp", 8080, (("10.0.0.5", 80),))),
                    ingress_ifname="eth0")
    assert lb.rules(b) == [
        ("prerouting", 'iifname != "eth0" meta l4proto tcp th dport 8080 dnat ip to numgen random mod 1 '
                       "map { 0 : 10.0.0.5 . 80 }"),
        ("port_reject", 'iifname != "eth0" meta l4proto . th dport { udp . 53 } reject'),
        ("postrouting", 'oifname "eth0" masquerade'),
    ]
    with pytest.raises(ValueError, match="protocol 'sctp'"):
        lb.IngressPort("sctp", 1)
    with pytest.raises(ValueError, match="ingress interface"):
        lb.Balancer(ports=(lb.IngressPort("tcp", 80),))


# -- real namespaces --------------------------------------------------------------

SERVER = textwrap.dedent("""
    import socket, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7000)); s.listen(64)
    print("ready", flush=True)
    def serve(c):
        with c:
            me = c.getsockname()[0]
            c.sendall((me + "\\n").encode())
            while True:
                data = c.recv(100)
                if not data:
                    return
                c.sendall((me + "\\n").encode())
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
""")


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """A client namespace (10.91.0.1) and a server namespace holding two
    backend addresses (10.91.0.2, .3) on one veth, a TCP server answering
    each line with the address it was reached at."""
    tag = f"lbt{os.getpid() % 100000}"
    cli, srv = f"{tag}c", f"{tag}s"
    procs = []
    try:
        for n in (cli, srv):
            subprocess.run(["ip", "netns", "add", n], check=True)
        subprocess.run(["ip", "link", "add", f"{tag}a", "netns", cli, "type", "veth", "peer", "name", f"{tag}b",
                        "netns", srv], check=True)
        for ns, dev, addrs in ((cli, f"{tag}a", ["10.91.0.1/24"]), (srv, f"{tag}b", ["10.91.0.2/24", "10.91.0.3/24"])):
            sh = ["ip link set lo up", f"ip link set {dev} up"] + [f"ip addr add {a} dev {dev}" for a in addrs]
            for cmd in sh:
                subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd.split()], check=True)
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{srv}", sys.executable, "-c", SERVER],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield f"/run/netns/{cli}", f"/run/netns/{srv}"
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in (cli, srv):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def in_netns(path: str, fn):  # type: ignore[no-untyped-def]
    """fn() on a thread inside the namespace at path; its result."""
    out: list[object] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            with entered(path):
                out.append(fn())
        except BaseException as e:  # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def ask(vip: str) -> str:
    with socket.create_connection((vip, 7000), timeout=2) as c:
        return c.makefile().readline().strip()


@ROOT
def test_vip_balances_keeps_established_and_refuses_when_empty(pair: tuple[str, str]) -> None:
    from overlay_net.manager import NetworkDataplane

    cli, _ = pair
    vip = "10.91.0.100"

    async def main() -> None:
        dp = NetworkDataplane("lbtest", "127.0.0.1")
        try:
            both = lb.Balancer(vips=(lb.VirtualService(vip, ("10.91.0.2", "10.91.0.3")),))
            assert await dp.balance({cli: both}) == []
            seen = collections.Counter(in_netns(cli, lambda: [ask(vip) for _ in range(60)]))
            assert set(seen) == {"10.91.0.2", "10.91.0.3"} and min(seen.values()) >= 10, seen

            # A connection established to .2 stays on .2 after .2 leaves the set.
            conn = in_netns(cli, lambda: socket.create_connection((vip, 7000), timeout=2))
            f = conn.makefile()
            first = f.readline().strip()
            other = "10.91.0.3" if first == "10.91.0.2" else "10.91.0.2"
            assert await dp.balance({cli: lb.Balancer(vips=(lb.VirtualService(vip, (other,)),))}) == []
            conn.sendall(b"again\n")
            assert f.readline().strip() == first
            conn.close()
            # New connections go only to what is left.
            assert set(in_netns(cli, lambda: [ask(vip) for _ in range(20)])) == {other}

            # No backend: refused at once, not a timeout.
            assert await dp.balance({cli: lb.Balancer(vips=(lb.VirtualService(vip, ()),))}) == []
            t0 = time.monotonic()
            with pytest.raises(ConnectionRefusedError):
                in_netns(cli, lambda: ask(vip))
            assert time.monotonic() - t0 < 0.5

            # An unchanged balancer is not written again.
            assert await dp.balance({cli: lb.Balancer(vips=(lb.VirtualService(vip, ()),))}) == []
            # A namespace that is gone is reported, not raised.
            problems = await dp.balance({"/run/netns/no-such-ns": both})
            assert len(problems) == 1 and "no-such-ns" in problems[0]
        finally:
            await dp.close()

    asyncio.run(main())
    listing = subprocess.run(["nsenter", f"--net={cli}", "nft", "list", "table", "ip", "lbtestlb"],
                             capture_output=True, text=True, check=True).stdout
    assert "ip daddr 10.91.0.100 reject" in listing
