"""The overlay dataplane on real kernels: three fleet hosts (network
namespaces on one underlay bridge), each programmed by its own
NetworkDataplane, with containers that are plain namespaces or processes in
namespaces of their own. Traffic stays inside namespaces the test made."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
import pytest
from pyroute2 import IPRoute

from overlay_net import ApplyError, Endpoint, Network, NetworkDataplane, StateError
from overlay_net import teardown as overlay_teardown
from overlay_net import plan as P
from overlay_net.names import Naming
from tests.harness.fleet import Fleet, fleet_fixture
from tests.overlay_net.world import World, df_ping, fdb_and_neigh, snmp_ip, world

pytestmark = [
    pytest.mark.root,
    pytest.mark.multihost,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, netlink)"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox (ping, nc)"),
]

fleet = fleet_fixture(("a", "b", "c"))

N1 = Network("n1", 4201, "10.60.0.0/24")


@pytest.fixture
def w(fleet: Fleet) -> Iterator[World]:
    with world(fleet) as wd:
        yield wd


def ep(id: str, c: object, addr: str, net: str = "n1", ifname: str = "eth0", mac: str = "") -> Endpoint:
    return Endpoint(id, net, c.netns, ifname, addr, mac)  # type: ignore[attr-defined]


def test_mesh_icmp_tcp_and_mtu(w: World) -> None:
    """Every endpoint reaches every other across hosts (two share host a);
    one endpoint is a process (busybox nc) in a namespace of its own; a
    1,400-byte DF ping crosses unfragmented at MTU 1450."""
    a1, a2 = w.container("a", "c1"), w.container("a", "c2")
    b1 = w.process_container("b", "srv", ["busybox", "nc", "-ll", "-p", "7000", "-e", "/bin/cat"])
    c1 = w.container("c", "c1")
    eps = {"a": [ep("ea1", a1, "10.60.0.2/24"), ep("ea2", a2, "10.60.0.3/24")],
           "b": [ep("eb1", b1, "10.60.0.4/24")], "c": [ep("ec1", c1, "10.60.0.5/24")]}
    done = w.apply_all([N1], eps)
    assert all(done.values())
    # Applying the same state again does nothing.
    assert w.apply_all([N1], eps) == {"a": [], "b": [], "c": []}

    boxes = {e.id: c for e, c in zip([*eps["a"], *eps["b"], *eps["c"]], [a1, a2, b1, c1])}
    every = [e for es in eps.values() for e in es]
    for src in every:
        for dst in every:
            if src is not dst:
                assert boxes[src.id].ping(dst.address.ip), f"{src.id} -> {dst.id}"
    # TCP both ways between every pair: each box runs a server naming itself.
    for box in (a1, a2, c1):
        w.procs.append(box.serve(["/bin/echo", f"server {box.host.name}-{box.name}"], port=7001))
    time.sleep(0.2)
    for src in every:
        for dst in every:
            if src is dst:
                continue
            if boxes[dst.id] is b1:
                assert boxes[src.id].tcp(dst.address.ip, data=f"from {src.id}") == f"from {src.id}"
            else:
                want = f"server {boxes[dst.id].host.name}-{boxes[dst.id].name}"
                assert boxes[src.id].tcp(dst.address.ip, 7001) == want, f"{src.id} -> {dst.id}"
    # The MTU is 1450 everywhere on the overlay.
    for c in (a1, a2, c1):
        assert {link.get_attr("IFLA_MTU") for link in c.links() if link.get_attr("IFLA_IFNAME") == "eth0"} == {1450}

    recv_host = w.host("c").netns_path
    before_host, before_box = snmp_ip(recv_host), snmp_ip(c1.netns)
    assert df_ping(a1, "10.60.0.5", 1400).startswith("ok 1400")
    assert df_ping(a1, "10.60.0.5", 1422).startswith("ok 1422")  # 1450 bytes of IP: the most that fits
    assert df_ping(a1, "10.60.0.5", 1423) == "emsgsize"
    after_host, after_box = snmp_ip(recv_host), snmp_ip(c1.netns)
    for before, after in ((before_host, after_host), (before_box, after_box)):
        assert after["ReasmReqds"] == before["ReasmReqds"], "a packet arrived in fragments"
    assert snmp_ip(w.host("a").netns_path)["FragCreates"] == 0


def test_same_subnet_networks_are_isolated(w: World) -> None:
    """x and y share subnet and addresses on the same hosts, yet each
    endpoint reaches only its own network's peer; an endpoint on x and z
    reaches both; egress interfaces do not connect containers either."""
    x = Network("x", 4301, "10.70.0.0/24")
    y = Network("y", 4302, "10.70.0.0/24")
    z = Network("z", 4303, "10.71.0.0/24")
    ax, ay = w.container("a", "cx"), w.container("a", "cy")
    bx, by, bz = w.container("b", "cx"), w.container("b", "cy"), w.container("b", "cz")
    procs = [bx.serve(["/bin/echo", "x-server"]), by.serve(["/bin/echo", "y-server"]),
             bz.serve(["/bin/echo", "z-server"])]
    w.procs += procs
    placement = {
        "a": [ep("ax", ax, "10.70.0.2/24", "x", mac="02:00:00:00:0a:02"),
              ep("ax-z", ax, "10.71.0.2/24", "z", ifname="eth1"),
              ep("ay", ay, "10.70.0.2/24", "y", mac="02:00:00:00:0b:02")],
        "b": [ep("bx", bx, "10.70.0.3/24", "x", mac="02:00:00:00:0a:03"),
              ep("by", by, "10.70.0.3/24", "y", mac="02:00:00:00:0b:03"),
              ep("bz", bz, "10.71.0.3/24", "z")],
    }
    w.apply_all([x, y, z], placement)
    time.sleep(0.2)  # servers listening
    assert ax.tcp("10.70.0.3") == "x-server"
    assert ay.tcp("10.70.0.3") == "y-server"
    assert ax.tcp("10.71.0.3") == "z-server"
    assert ay.tcp("10.71.0.3", wait=1) == ""  # y's container is not on z
    # The neighbour each one resolved is its own network's peer.
    for c, mac in ((ax, "02:00:00:00:0a:03"), (ay, "02:00:00:00:0b:03")):
        out = c.run(["busybox", "arp", "-n"]).stdout
        assert mac in out and ("02:00:00:00:0b:03" if mac.endswith("0a:03") else "02:00:00:00:0a:03") not in out
    # Both have egress on the same node bridge; its ports are isolated.
    ay_egress = [link for link in ay.links() if link.get_attr("IFLA_IFNAME") == "eth1"]
    assert ay_egress
    with_addr = ay.run(["busybox", "ip", "-4", "-o", "addr", "show", "eth1"]).stdout.split()
    ay_egress_ip = with_addr[with_addr.index("inet") + 1].split("/")[0]
    assert not ax.ping(ay_egress_ip, wait=1)


SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 7100)); s.listen(8)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        c.sendall(f"{peer[0]}\\n".encode()); c.close()
""")


def test_egress_and_internal(w: World) -> None:
    """A container on a non-internal network reaches a server in the
    underlay bridge's namespace, masqueraded behind its host's address; one
    on an internal network has no egress interface and no default route."""
    pub = Network("pub", 4401, "10.80.0.0/24")
    priv = Network("priv", 4402, "10.81.0.0/24", internal=True)
    p, q = w.container("a", "p"), w.container("a", "q")
    w.apply_all([pub, priv], {"a": [ep("p", p, "10.80.0.2/24", "pub"), ep("q", q, "10.81.0.2/24", "priv")]})

    ul = f"/run/netns/{w.fleet.bridge_netns}"
    server_ip = str(w.fleet.subnet.network_address + 254)
    subprocess.run(["nsenter", f"--net={ul}", "--", "busybox", "ip", "addr", "add", f"{server_ip}/24", "dev", "br0"],
                   check=True, timeout=10)
    srv = subprocess.Popen(["nsenter", f"--net={ul}", "--", sys.executable, "-c", SERVER, server_ip],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    w.procs.append(srv)  # type: ignore[arg-type]
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"

    assert p.tcp(server_ip, 7100, wait=3) == w.host("a").addr  # masqueraded
    [route] = p.default_routes()
    assert route.get_attr("RTA_GATEWAY") == "172.30.0.1"
    assert {link.get_attr("IFLA_IFNAME") for link in p.links()} == {"lo", "eth0", "eth1"}

    assert q.default_routes() == []
    assert {link.get_attr("IFLA_IFNAME") for link in q.links()} == {"lo", "eth0"}
    out = q.run(["busybox", "nc", "-w", "2", server_ip, "7100"], input="x\n")
    assert out.returncode != 0 and out.stdout == ""
    assert "unreachable" in out.stderr.lower()


def test_endpoint_moves_to_another_host(w: World) -> None:
    """m runs on a, then on c with the same address and MAC: after every host
    applies the new tables, the address answers within 1 s and no host has
    an entry pointing m's MAC at a any more."""
    a1, b1, ma = w.container("a", "c1"), w.container("b", "c1"), w.container("a", "m")
    c1, mc = w.container("c", "c1"), w.container("c", "m")
    base = {"a": [ep("a1", a1, "10.60.0.2/24")], "b": [ep("b1", b1, "10.60.0.3/24")],
            "c": [ep("c1", c1, "10.60.0.4/24")]}
    m_on_a = ep("m", ma, "10.60.0.9/24")
    w.apply_all([N1], {"a": base["a"] + [m_on_a], "b": base["b"], "c": base["c"]})
    assert b1.ping("10.60.0.9") and c1.ping("10.60.0.9")

    m_on_c = ep("m", mc, "10.60.0.9/24")
    # m says nothing by itself once moved (no IPv6 chatter): c's bridge,
    # which learnt m's MAC behind the VXLAN port, must be corrected by the
    # attach itself, not by m's first frame.
    for key in ("all", "default"):
        mc.run(["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])
    t0 = time.monotonic()
    w.apply_all([N1], {"a": base["a"], "b": base["b"], "c": base["c"] + [m_on_c]})
    for src in (a1, b1, c1):
        assert src.ping("10.60.0.9", wait=1), f"{src.host.name} cannot reach m on c"
    assert time.monotonic() - t0 < 3.0  # three applies plus three 1-s-bounded pings

    a_addr, c_addr = w.host("a").addr, w.host("c").addr
    mac = m_on_c.mac
    for h in ("a", "b", "c"):
        fdb, neigh = fdb_and_neigh(Naming(w.host(h).name_prefix).sandbox_ns("n1"))
        assert (mac, a_addr) not in fdb, f"host {h} still sends m to a"
        if h != "c":
            assert (mac, c_addr) in fdb and ("10.60.0.9", mac) in neigh
        else:
            assert not any(m == mac for m, _ in fdb)  # local now: learnt by the bridge, not a peer entry
            assert not any(ip == "10.60.0.9" for ip, _ in neigh)
    assert {link.get_attr("IFLA_IFNAME") for link in ma.links()} == {"lo"}  # detached on a


TCP_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], 7000), timeout=5)
    for line in sys.stdin:
        s.sendall(line.encode())
        print(s.recv(100).decode().strip(), flush=True)
""")


def test_restart_adopts_without_disruption(w: World) -> None:
    """A new dataplane object over the kernel state of a previous one plans
    and does nothing; a TCP connection and a ping run through the 'restart'."""
    a1 = w.container("a", "c1")
    srv = w.process_container("b", "srv", ["busybox", "nc", "-ll", "-p", "7000", "-e", "/bin/cat"])
    internal = Network("in", 4501, "10.61.0.0/24", internal=True)
    a2, b2 = w.container("a", "c2"), w.container("b", "c2")
    placement = {"a": [ep("a1", a1, "10.60.0.2/24"), ep("a2", a2, "10.61.0.2/24", "in")],
                 "b": [ep("b1", srv, "10.60.0.3/24"), ep("b2", b2, "10.61.0.3/24", "in")]}
    w.apply_all([N1, internal], placement)

    client = subprocess.Popen(["nsenter", f"--net={a1.netns}", "--", sys.executable, "-c", TCP_CLIENT, "10.60.0.3"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    w.procs.append(client)  # type: ignore[arg-type]
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write("before\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "before"
    pinger = subprocess.Popen(["nsenter", f"--net={a2.netns}", "--", "busybox", "ping", "-i", "0.1", "-c", "30",
                               "10.61.0.3"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    w.procs.append(pinger)  # type: ignore[arg-type]

    # "Restart": the old objects go away (kernel state stays), new ones come.
    for dp in w.dps.values():
        w.runner.run(dp.close())
    w.dps.clear()
    states = w.states([N1, internal], placement)
    for h, s in states.items():
        assert w.runner.run(w.dataplane(h).plan(s)) == []
        assert w.apply(h, s) == []

    client.stdin.write("after\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "after"
    out, _ = pinger.communicate(timeout=20)
    assert "30 packets transmitted, 30 packets received" in out

    # The restarted daemon also removes what is no longer desired.
    smaller = w.states([N1], {"a": placement["a"][:1], "b": placement["b"][:1]})
    done = w.apply("a", smaller["a"])
    assert [type(x) for x in done] == [P.RemoveSandbox]
    assert not os.path.exists(Naming(w.host("a").name_prefix).sandbox_path("in"))


def test_teardown_leaves_nothing(w: World) -> None:
    a1, b1 = w.container("a", "c1"), w.container("b", "c1")
    internal = Network("in", 4501, "10.61.0.0/24", internal=True)
    placement = {"a": [ep("a1", a1, "10.60.0.2/24"), ep("a1i", a1, "10.61.0.2/24", "in", ifname="eth1")],
                 "b": [ep("b1", b1, "10.60.0.3/24")]}
    w.apply_all([N1, internal], placement)

    for h in ("a", "b"):
        host = w.host(h)
        if h == "a":
            removed = w.runner.run(w.dps[h].teardown())
        else:  # without a dataplane object, as a node leaving the cluster would
            removed = w.runner.run(overlay_teardown(host.name_prefix, host_netns=host.netns_path))
        assert any(r.startswith("netns") for r in removed) and any(r.startswith("nft") for r in removed)
        naming = Naming(host.name_prefix)
        assert not [n for n in os.listdir("/run/netns") if n.startswith(naming.sandbox_ns_prefix)]
        with_prefix = subprocess.run(["nsenter", f"--net={host.netns_path}", "--", "nft", "list", "tables"],
                                     capture_output=True, text=True, check=True).stdout
        assert host.name_prefix not in with_prefix
        with IPRoute(netns=host.netns) as ipr:
            names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            aliases = {link.get_attr("IFLA_IFALIAS") for link in ipr.get_links()} - {None}
        assert names == {"lo", "eth0"} and not any(x.startswith(naming.tag) for x in aliases)
        assert w.runner.run(w.dps[h].teardown()) == []
    # The containers (not the dataplane's) are still there, emptied.
    assert {link.get_attr("IFLA_IFNAME") for link in a1.links()} == {"lo"}
    # And everything can be made again at once (no VNI left busy).
    again = w.apply_all([N1, internal], placement)
    assert P.CreateVxlan in {type(x) for x in again["a"]}
    assert a1.ping("10.60.0.3")


def test_failures_are_isolated_and_reported(w: World) -> None:
    a1 = w.container("a", "c1")
    other = Network("n2", 4601, "10.62.0.0/24")
    s = w.state("a", [N1, other], [ep("a1", a1, "10.60.0.2/24"),
                                   Endpoint("gone", "n2", "/run/netns/does-not-exist-ovtest", "eth0", "10.62.0.2/24")],
                [])
    with pytest.raises(ApplyError) as e:
        w.apply("a", s)
    assert "does-not-exist-ovtest" in str(e.value) and "does not exist" in str(e.value)
    assert [type(f.action) for f in e.value.failures] == [P.AttachEndpoint]
    assert any(isinstance(x, P.AttachEndpoint) and x.endpoint.id == "a1" for x in e.value.done)
    assert a1.ping("10.60.0.1")  # a1 works: its sandbox's bridge answers
    # Sandbox files with no namespace behind them (a crash mid-create) are
    # replaced or removed, not a reason to fail.
    naming = Naming(w.host("a").name_prefix)
    n3 = Network("n3", 4603, "10.63.0.0/24")
    a3 = w.container("a", "c3")
    for net_id in ("n3", "junk"):
        open(naming.sandbox_path(net_id), "w").close()
    s = w.state("a", [N1, n3], [ep("a1", a1, "10.60.0.2/24"), ep("a3", a3, "10.63.0.2/24", "n3")], [])
    done = w.apply("a", s)
    assert [str(x) for x in done if isinstance(x, (P.RemoveSandbox, P.CreateSandbox))] == [
        "RemoveSandbox(network_id=junk)", "RemoveSandbox(network_id=n2)", "RemoveSandbox(network_id=n3)",
        "CreateSandbox(network_id=n3)"]
    assert not os.path.exists(naming.sandbox_path("junk"))
    assert a3.ping("10.63.0.1")
    assert w.apply("a", s) == [] and a1.ping("10.60.0.1")
    with pytest.raises(StateError) as se:
        w.apply("b", s)
    assert {p.field for p in se.value.problems} == {"prefix", "underlay_addr"}


def test_apply_container_and_event_loop_stays_free(w: World) -> None:
    """The engine's path: program one container's namespace only; the
    event loop keeps running while the kernel work happens."""
    a1, a2 = w.container("a", "c1"), w.container("a", "c2")
    s = w.state("a", [N1], [ep("a1", a1, "10.60.0.2/24"), ep("a2", a2, "10.60.0.3/24")], [])

    async def go() -> tuple[list[P.Action], float]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        t = asyncio.create_task(tick())
        done = await w.dataplane("a").apply_container(a1.netns, s)
        stop.set()
        await t
        return done, max(gaps)

    done, worst_gap = w.runner.run(go())
    assert {x.endpoint.id for x in done if isinstance(x, P.AttachEndpoint)} == {"a1"}
    assert {link.get_attr("IFLA_IFNAME") for link in a2.links()} == {"lo"}
    assert worst_gap < 0.5, f"the event loop stalled {worst_gap:.3f} s"
    assert a1.ping("10.60.0.1")
    rest = w.apply("a", s)
    assert {x.endpoint.id for x in rest if isinstance(x, P.AttachEndpoint)} == {"a2"}
    assert a1.ping("10.60.0.3")


def test_apply_container_reads_only_its_own_namespace(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task start programs its container without reading every other
    container on the node (that made each start slower than the last), yet
    each container gets an egress address of its own and the whole-node
    apply afterwards finds nothing to do."""
    from overlay_net.netlink import Kernel

    read: list[str] = []
    real_peer_in = Kernel._peer_in

    def peer_in(self: Kernel, path: str, local_index: int, peer_index: int | None) -> object:
        read.append(path)
        return real_peer_in(self, path, local_index, peer_index)

    monkeypatch.setattr(Kernel, "_peer_in", peer_in)
    n2 = Network("n2", 4602, "10.62.0.0/24")
    cs = [w.container("a", f"c{i}") for i in range(4)]
    eps = [ep(f"a{i}", c, f"10.60.0.{i + 2}/24") for i, c in enumerate(cs)]
    other = w.container("a", "o")  # on another network: its sandbox is not even looked at
    eps.append(ep("o", other, "10.62.0.2/24", "n2"))
    s = w.state("a", [N1, n2], eps, [])
    w.runner.run(w.dataplane("a").apply_container(other.netns, s))
    foreign: list[str] = []
    for c in cs:
        read.clear()
        w.runner.run(w.dataplane("a").apply_container(c.netns, s))
        foreign += sorted({p for p in read if p != c.netns})
    # Another container's namespace is read once, when its egress link is
    # new to the dataplane; after that its observed state is kept.
    assert len(foreign) == len(set(foreign)) <= len(cs), foreign
    egress = set()
    for c in [*cs, other]:
        addrs = [a for link in c.links() if link.get_attr("IFLA_IFNAME") != "lo"
                 for a in iproute_addrs(c.netns, link["index"]) if a.startswith("172.30.0.")]
        assert len(addrs) == 1, (c.netns, addrs)
        egress.add(addrs[0])
    assert len(egress) == 5, egress
    assert w.apply("a", s) == []
    assert cs[3].ping("10.60.0.2") and cs[0].ping("10.60.0.5")


def iproute_addrs(netns: str, index: int) -> list[str]:
    with IPRoute(netns=netns) as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)]


def test_dataplane_arguments_are_validated() -> None:
    with pytest.raises(StateError):
        NetworkDataplane("bad prefix", "10.0.0.1")
    with pytest.raises(StateError) as e:
        NetworkDataplane("orch-", "not-an-ip")
    assert [p.field for p in e.value.problems] == ["underlay_addr"]


def test_mtu_follows_a_smaller_underlay(w: World) -> None:
    """On a host whose underlay MTU is 1400 the overlay's interfaces get 1350
    (nothing bigger could cross unfragmented); the peer's 1450 still talks to
    it, for TCP at least (MSS is negotiated)."""
    with IPRoute(netns=w.host("c").netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], mtu=1400)
    a1, c1 = w.container("a", "c1"), w.container("c", "c1")
    w.procs.append(c1.serve(["/bin/echo", "small"]))
    w.apply_all([N1], {"a": [ep("a1", a1, "10.60.0.2/24")], "c": [ep("c1", c1, "10.60.0.3/24")]})
    assert {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_MTU") for link in c1.links()}["eth0"] == 1350
    assert {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_MTU") for link in a1.links()}["eth0"] == 1450
    assert df_ping(c1, "10.60.0.2", 1322).startswith("ok 1322")
    assert df_ping(c1, "10.60.0.2", 1323) == "emsgsize"
    time.sleep(0.1)
    assert a1.tcp("10.60.0.3") == "small"
