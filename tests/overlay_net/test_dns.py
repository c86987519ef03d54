"""Embedded DNS: the name table as plain data, then the resolver serving
inside real network namespaces the test makes, queried from inside them
with our own sockets and with busybox nslookup. Forwarding goes to a fake
upstream on host loopback; nothing leaves the machine."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

from overlay_net.dns import (
    FORWARD,
    NXDOMAIN,
    Answer,
    DnsError,
    NameEndpoint,
    NameTable,
    Resolver,
    ServiceName,
    read_resolv_conf,
)

N1, N2 = "net1", "net2"


def ips(*a: str) -> tuple[IPv4Address, ...]:
    return tuple(sorted(IPv4Address(x) for x in a))


def table() -> NameTable:
    """web (vip) with two tasks and db (dnsrr) with one on net1; api on net2."""
    t = NameTable(search_domains=["corp.example"])
    t.set_network_name(N1, "front")
    t.add_endpoint(NameEndpoint(N1, "t1", "10.0.1.5/24", "web", 1, aliases=("www",), hostname="c0ffee01"))
    t.add_endpoint(NameEndpoint(N1, "t2", "10.0.1.6/24", "web", 2))
    t.set_service(ServiceName(N1, "web", "vip", "10.0.1.2/24"))
    t.add_endpoint(NameEndpoint(N1, "t3", "10.0.1.7/24", "db", 1))
    t.set_service(ServiceName(N1, "db", "dnsrr"))
    t.add_endpoint(NameEndpoint(N2, "t4", "10.0.2.5/24", "api", 1))
    t.set_service(ServiceName(N2, "api", "vip", "10.0.2.2"))
    return t


# -- the table ----------------------------------------------------------------------


def test_service_names_tasks_aliases_task_names_hostnames() -> None:
    t = table()
    assert t.resolve([N1], "web") == Answer(ips("10.0.1.2"))
    assert t.resolve([N1], "tasks.web") == Answer(ips("10.0.1.5", "10.0.1.6"))
    assert t.resolve([N1], "db") == Answer(ips("10.0.1.7"))  # dnsrr: the task addresses
    assert t.resolve([N1], "tasks.db") == Answer(ips("10.0.1.7"))
    assert t.resolve([N1], "www") == Answer(ips("10.0.1.5"))
    assert t.resolve([N1], "web.1.t1") == Answer(ips("10.0.1.5"))
    assert t.resolve([N1], "c0ffee01") == Answer(ips("10.0.1.5"))


def test_case_trailing_dot_search_domain_and_network_suffix() -> None:
    t = table()
    for q in ("WEB.", "Web", "web.corp.example.", "web.front", "TASKS.web.front."):
        assert isinstance(t.resolve([N1], q), Answer), q
    assert t.resolve([N1], "tasks.web.corp.example") == Answer(ips("10.0.1.5", "10.0.1.6"))
    # Under a search domain an unknown name may be a real host there.
    assert t.resolve([N1], "nope.corp.example") is FORWARD
    # Under a network name of the container, unknown is ours to deny.
    assert t.resolve([N1], "nope.front") is NXDOMAIN


def test_scope_is_per_network() -> None:
    t = table()
    assert t.resolve([N1], "api") is NXDOMAIN
    assert t.resolve([N2], "web") is NXDOMAIN
    assert t.resolve([N2], "api") == Answer(ips("10.0.2.2"))
    assert t.resolve([N1, N2], "api") == Answer(ips("10.0.2.2"))
    assert t.resolve([], "web") is NXDOMAIN


def test_unknown_names_nxdomain_or_forward_and_other_types() -> None:
    t = table()
    assert t.resolve([N1], "nope") is NXDOMAIN
    assert t.resolve([N1], "tasks.nope") is NXDOMAIN
    assert t.resolve([N1], "example.com") is FORWARD
    assert t.resolve([N1], "web", "AAAA") == Answer()  # known: empty NOERROR
    assert t.resolve([N1], "web", "MX") == Answer()
    assert t.resolve([N1], "nope", "AAAA") is NXDOMAIN


def test_reverse_lookups() -> None:
    t = table()
    assert t.resolve([N1], "6.1.0.10.in-addr.arpa", "PTR") == Answer(names=("web.2.t2",))
    assert t.resolve([N1], "2.1.0.10.in-addr.arpa.", "PTR") == Answer(names=("web",))
    assert t.resolve([N2], "6.1.0.10.in-addr.arpa", "PTR") is FORWARD
    assert t.resolve([N1], "1.1.168.192.in-addr.arpa", "PTR") is FORWARD


def test_incremental_updates() -> None:
    t = table()
    t.add_endpoint(NameEndpoint(N1, "t9", "10.0.1.9", "web", 3))
    assert t.resolve([N1], "tasks.web") == Answer(ips("10.0.1.5", "10.0.1.6", "10.0.1.9"))
    assert t.remove_endpoint(N1, "t1")
    assert not t.remove_endpoint(N1, "t1")
    assert t.resolve([N1], "tasks.web") == Answer(ips("10.0.1.6", "10.0.1.9"))
    assert t.resolve([N1], "www") is NXDOMAIN
    assert t.resolve([N1], "c0ffee01") is NXDOMAIN
    assert t.resolve([N1], "5.1.0.10.in-addr.arpa", "PTR") is FORWARD
    # Re-adding a task replaces its old names and address.
    t.add_endpoint(NameEndpoint(N1, "t9", "10.0.1.19", "web", 3, aliases=("w3",)))
    assert t.resolve([N1], "tasks.web") == Answer(ips("10.0.1.6", "10.0.1.19"))
    assert t.resolve([N1], "w3") == Answer(ips("10.0.1.19"))
    # The last task of a dnsrr service gone: still the cluster's name, empty.
    t.remove_endpoint(N1, "t3")
    assert t.resolve([N1], "db") == Answer()
    assert t.remove_service(N1, "db")
    assert t.resolve([N1], "db") is NXDOMAIN
    # A vip-mode service whose VIP is unknown answers its tasks.
    t.set_service(ServiceName(N1, "web", "vip", None))
    assert t.resolve([N1], "web") == Answer(ips("10.0.1.6", "10.0.1.19"))
    t.remove_network(N1)
    assert t.resolve([N1], "tasks.web") is NXDOMAIN
    assert t.endpoints() == [NameEndpoint(N2, "t4", "10.0.2.5/24", "api", 1)]


def test_same_alias_on_two_tasks_answers_both() -> None:
    t = NameTable()
    t.add_endpoint(NameEndpoint(N1, "a", "10.0.1.5", aliases=("shared",)))
    t.add_endpoint(NameEndpoint(N1, "b", "10.0.1.6", aliases=("shared",)))
    assert t.resolve([N1], "shared") == Answer(ips("10.0.1.5", "10.0.1.6"))
    t.remove_endpoint(N1, "a")
    assert t.resolve([N1], "shared") == Answer(ips("10.0.1.6"))


@pytest.mark.parametrize("kw,field", [
    ({"address": "10.0.1.999"}, "address"),
    ({"address": "fe80::1"}, "address"),
    ({"service_name": "a.b"}, "service_name"),
    ({"aliases": ("ok", "bad name")}, "aliases[1]"),
    ({"hostname": "-x"}, "hostname"),
    ({"network_id": ""}, "network_id"),
])
def test_bad_records_name_the_field(kw: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"network_id": N1, "task_id": "t1", "address": "10.0.1.5", "service_name": "web"}
    args.update(kw)
    with pytest.raises(DnsError, match=field.replace("[", r"\[").replace("]", r"\]")):
        NameEndpoint(**args)  # type: ignore[arg-type]
    with pytest.raises(DnsError, match="mode"):
        ServiceName(N1, "web", "round-robin")  # type: ignore[arg-type]


def test_read_resolv_conf(tmp_path: object) -> None:
    p = os.path.join(str(tmp_path), "resolv.conf")
    with open(p, "w") as f:
        f.write("# host\nnameserver 10.9.9.9\nnameserver 127.0.0.11\nnameserver fe80::1\n"
                "nameserver 127.0.0.53 # local\nsearch corp.example lab.example\noptions ndots:0\n")
    assert read_resolv_conf(p) == ([("10.9.9.9", 53), ("127.0.0.53", 53)], ["corp.example", "lab.example"])
    assert read_resolv_conf(p + ".missing") == ([], [])


# -- the resolver in real namespaces -------------------------------------------------

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
UPSTREAM = ("127.0.0.77", 53053)


def _make_netns(name: str) -> str:
    from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]

    from overlay_net.netlink import entered

    netns.create(name)
    path = f"/run/netns/{name}"
    with entered(path), IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return path


def _remove_netns(name: str) -> None:
    from pyroute2 import netns

    if os.path.exists(f"/run/netns/{name}"):
        netns.remove(name)


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Makes namespaces on demand (names in the list); removes them all."""
    made: list[str] = []
    yield made
    for name in made:
        _remove_netns(name)


async def new_ns(made: list[str]) -> str:
    name = f"orchdns-{os.getpid()}-{len(made)}"
    made.append(name)
    return await asyncio.to_thread(_make_netns, name)


def _query(path: str | None, name: str, qtype: str = "A", tcp: bool = False, timeout: float = 2.0,
           raw: bytes | None = None, addr: tuple[str, int] = ("127.0.0.11", 53)) -> DNSRecord | None:
    """One query from a socket made inside `path` (None: this namespace)."""
    from overlay_net.netlink import entered

    with entered(path):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with s:
        s.settimeout(timeout)
        data = raw if raw is not None else DNSRecord.question(name, qtype).pack()
        s.connect(addr)
        if tcp:
            s.sendall(struct.pack("!H", len(data)) + data)
            size = struct.unpack("!H", _recv_exactly(s, 2))[0]
            return DNSRecord.parse(_recv_exactly(s, size))
        s.send(data)
        try:
            return DNSRecord.parse(s.recv(65535))
        except TimeoutError:
            return None


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


async def query(*a: object, **kw: object) -> DNSRecord | None:
    return await asyncio.to_thread(_query, *a, **kw)  # type: ignore[arg-type]


def a_records(r: DNSRecord | None) -> set[str]:
    assert r is not None
    return {str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A}


class _Upstream(asyncio.DatagramProtocol):
    """A tiny authoritative server: example.test -> 192.0.2.7, big.test ->
    60 addresses (truncated over UDP, whole over TCP), slow.test never
    answered, the rest NXDOMAIN."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.tcp_seen: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = DNSRecord.parse(data)
        name = str(q.q.qname).rstrip(".")
        self.seen.append(name)
        r = self.reply(q, name)
        if r is not None:
            out = r.pack()
            self.transport.sendto(out if len(out) <= 512 else r.truncate().pack(), addr)  # type: ignore[attr-defined]

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        q = DNSRecord.parse(await reader.readexactly(size))
        self.tcp_seen.append(str(q.q.qname).rstrip("."))
        r = self.reply(q, str(q.q.qname).rstrip("."))
        if r is not None:
            out = r.pack()
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
        writer.close()

    @staticmethod
    def reply(q: DNSRecord, name: str) -> DNSRecord | None:
        if name == "slow.test":
            return None
        r = q.reply()
        if name == "example.test":
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=30))
        elif name == "big.test":
            for i in range(60):
                r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"192.0.2.{i + 1}"), ttl=30))
        else:
            r.header.rcode = RCODE.NXDOMAIN
        return r


@pytest.fixture
async def upstream() -> AsyncIterator[_Upstream]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Upstream, local_addr=UPSTREAM)
    server = await asyncio.start_server(proto.tcp, *UPSTREAM)
    yield proto
    transport.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def resolver(upstream: _Upstream) -> AsyncIterator[Resolver]:
    r = Resolver(table(), upstreams=[UPSTREAM], forward_timeout=0.5)
    yield r
    await r.close()


@root
async def test_udp_answers_inside_the_namespace(resolver: Resolver, namespaces: list[str]) -> None:
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])
    assert resolver.serving() == ["c1"]
    assert a_records(await query(ns, "web")) == {"10.0.1.2"}
    assert a_records(await query(ns, "tasks.web")) == {"10.0.1.5", "10.0.1.6"}
    assert a_records(await query(ns, "www")) == {"10.0.1.5"}
    assert a_records(await query(ns, "db.")) == {"10.0.1.7"}
    r = await query(ns, "web", "AAAA")
    assert r is not None and r.header.rcode == RCODE.NOERROR and not r.rr
    # Another network's service is not visible from here.
    r = await query(ns, "api")
    assert r is not None and r.header.rcode == RCODE.NXDOMAIN
    # Unknown: NXDOMAIN, fast, without asking upstream.
    t0 = time.monotonic()
    r = await query(ns, "nope")
    assert r is not None and r.header.rcode == RCODE.NXDOMAIN and r.header.aa
    assert time.monotonic() - t0 < 0.05
    r = await query(ns, "6.1.0.10.in-addr.arpa", "PTR")
    assert r is not None and [str(rr.rdata) for rr in r.rr] == ["web.2.t2."]


@root
async def test_two_containers_see_their_own_networks_and_updates(resolver: Resolver,
                                                                namespaces: list[str]) -> None:
    ns1, ns2 = await new_ns(namespaces), await new_ns(namespaces)
    await resolver.serve("c1", ns1, [N1])
    await resolver.serve("c2", ns2, [N2])
    assert a_records(await query(ns2, "api")) == {"10.0.2.2"}
    assert (await query(ns2, "web")).header.rcode == RCODE.NXDOMAIN  # type: ignore[union-attr]
    # Incremental update seen at once; connect c2 to net1 too.
    resolver.table.add_endpoint(NameEndpoint(N1, "t8", "10.0.1.8", "web", 3))
    assert a_records(await query(ns1, "tasks.web")) == {"10.0.1.5", "10.0.1.6", "10.0.1.8"}
    resolver.set_networks("c2", [N1, N2])
    assert a_records(await query(ns2, "web")) == {"10.0.1.2"}
    # A whole new table.
    fresh = NameTable()
    fresh.add_endpoint(NameEndpoint(N1, "x", "10.0.1.50", "web", 1))
    resolver.update(fresh)
    assert a_records(await query(ns1, "web")) == {"10.0.1.50"}


@root
async def test_busybox_nslookup(resolver: Resolver, namespaces: list[str]) -> None:
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])

    async def nslookup(name: str) -> tuple[int, str]:
        p = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={ns}", "/bin/busybox", "nslookup", name, "127.0.0.11",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(p.communicate(), 10)
        return p.returncode or 0, out.decode()

    rc, out = await nslookup("web")
    assert rc == 0 and "Address: 10.0.1.2" in out, out
    rc, out = await nslookup("tasks.web")
    assert rc == 0 and "Address: 10.0.1.5" in out and "Address: 10.0.1.6" in out, out
    rc, out = await nslookup("www")
    assert rc == 0 and "Address: 10.0.1.5" in out, out
    rc, out = await nslookup("api")
    assert rc != 0 and "NXDOMAIN" in out, out
    rc, out = await nslookup("example.test")
    assert rc == 0 and "Address: 192.0.2.7" in out, out


@root
async def test_tcp(resolver: Resolver, namespaces: list[str]) -> None:
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])
    assert a_records(await query(ns, "tasks.web", tcp=True)) == {"10.0.1.5", "10.0.1.6"}
    r = await query(ns, "nope", tcp=True)
    assert r is not None and r.header.rcode == RCODE.NXDOMAIN
    assert a_records(await query(ns, "example.test", tcp=True)) == {"192.0.2.7"}


@root
async def test_big_answer_truncated_over_udp_whole_over_tcp(resolver: Resolver, upstream: _Upstream,
                                                             namespaces: list[str]) -> None:
    for i in range(60):
        resolver.table.add_endpoint(NameEndpoint(N1, f"m{i}", f"10.0.1.{100 + i}", "many", i + 1))
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])
    r = await query(ns, "tasks.many")
    assert r is not None and r.header.tc and len(r.rr) < 60
    assert len(a_records(await query(ns, "tasks.many", tcp=True))) == 60
    r = await query(ns, "big.test")
    assert r is not None and r.header.tc
    # Over TCP the resolver asks upstream over TCP too once UDP came back truncated.
    assert len(a_records(await query(ns, "big.test", tcp=True))) == 60
    assert upstream.tcp_seen == ["big.test"]


@root
async def test_forwarding(resolver: Resolver, upstream: _Upstream, namespaces: list[str]) -> None:
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])
    r = await query(ns, "example.test")
    assert a_records(r) == {"192.0.2.7"}
    r = await query(ns, "missing.test")
    assert r is not None and r.header.rcode == RCODE.NXDOMAIN
    assert upstream.seen == ["example.test", "missing.test"]
    # Cluster names never leave the node.
    await query(ns, "nope")
    await query(ns, "web")
    assert upstream.seen == ["example.test", "missing.test"]
    # No answer upstream: SERVFAIL after the timeout, and the resolver
    # answers others meanwhile.
    t0 = time.monotonic()
    slow = asyncio.ensure_future(query(ns, "slow.test"))
    await asyncio.sleep(0.1)
    assert a_records(await query(ns, "web")) == {"10.0.1.2"}
    assert not slow.done()
    r = await slow
    assert r is not None and r.header.rcode == RCODE.SERVFAIL
    assert 0.4 < time.monotonic() - t0 < 1.5


@root
async def test_no_upstream_servfail(namespaces: list[str]) -> None:
    r = Resolver(table(), upstreams=[])
    try:
        ns = await new_ns(namespaces)
        await r.serve("c1", ns, [N1])
        ans = await query(ns, "example.test")
        assert ans is not None and ans.header.rcode == RCODE.SERVFAIL
        assert a_records(await query(ns, "web")) == {"10.0.1.2"}
    finally:
        await r.close()


@root
async def test_bad_packets_never_stop_it(resolver: Resolver, namespaces: list[str]) -> None:
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])
    # Garbage after a valid header: FORMERR with the same id.
    r = await asyncio.to_thread(_raw, ns, struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\xff\xff")
    assert r is not None and r[:2] == b"\x42\x42" and (r[3] & 0x0F) == RCODE.FORMERR
    # Too short to answer, and a response: dropped.
    assert await asyncio.to_thread(_raw, ns, b"\x01") is None
    resp = DNSRecord.question("web").reply().pack()
    assert await asyncio.to_thread(_raw, ns, resp) is None
    # Two questions: FORMERR.
    two = DNSRecord.question("web")
    two.add_question(DNSRecord.question("www").q)
    r2 = await query(ns, "", raw=two.pack())
    assert r2 is not None and r2.header.rcode == RCODE.FORMERR
    # TCP: a length prefix promising more than comes, then hang up.
    await asyncio.to_thread(_tcp_garbage, ns)
    assert a_records(await query(ns, "web")) == {"10.0.1.2"}
    assert a_records(await query(ns, "web", tcp=True)) == {"10.0.1.2"}


@root
async def test_random_packets(resolver: Resolver, namespaces: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Mutated queries and random bytes: whatever comes back is a parseable
    DNS message, and the resolver keeps answering."""
    import random

    rnd = random.Random(7)
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])
    base = [DNSRecord.question(n, t).pack() for n, t in (("web", "A"), ("tasks.web", "AAAA"), ("x.test", "MX"))]

    def blast() -> int:
        from overlay_net.netlink import entered

        with entered(ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        answered = 0
        with s:
            s.settimeout(0.02)
            s.connect(("127.0.0.11", 53))
            for i in range(200):
                if i % 3 == 0:
                    data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(40)))
                else:
                    b = bytearray(rnd.choice(base))
                    for _ in range(rnd.randrange(1, 4)):
                        b[rnd.randrange(len(b))] = rnd.randrange(256)
                    data = bytes(b[: rnd.randrange(len(b) + 1)] if i % 5 == 0 else b)
                s.send(data)
                try:
                    DNSRecord.parse(s.recv(65535))
                    answered += 1
                except (TimeoutError, ConnectionRefusedError):
                    pass
        return answered

    assert await asyncio.to_thread(blast) > 50
    # Nothing reached the resolver's last-resort exception handlers.
    assert [r.getMessage() for r in caplog.records if r.name == "overlay_net.dns"] == []
    assert a_records(await query(ns, "web")) == {"10.0.1.2"}
    assert resolver.serving() == ["c1"]


def _raw(ns: str, data: bytes) -> bytes | None:
    from overlay_net.netlink import entered

    with entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(0.3)
        s.connect(("127.0.0.11", 53))
        s.send(data)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def _tcp_garbage(ns: str) -> None:
    from overlay_net.netlink import entered

    with entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.connect(("127.0.0.11", 53))
        s.sendall(b"\x01\x00garbage")


@root
async def test_not_reachable_from_the_host_and_closed_after_stop(resolver: Resolver,
                                                                  namespaces: list[str]) -> None:
    ns = await new_ns(namespaces)
    await resolver.serve("c1", ns, [N1])
    # From the host namespace (this thread's): nothing there.
    with pytest.raises(ConnectionRefusedError):
        await query(None, "web", timeout=0.3)
    with pytest.raises(ConnectionRefusedError):
        await query(None, "web", tcp=True)
    assert a_records(await query(ns, "web")) == {"10.0.1.2"}
    assert await resolver.stop_serving("c1")
    assert not await resolver.stop_serving("c1")
    assert resolver.serving() == []
    with pytest.raises(ConnectionRefusedError):
        await query(ns, "web", tcp=True)
    with pytest.raises(ConnectionRefusedError):
        await query(ns, "web", timeout=0.3)  # ICMP port unreachable on a connected socket
    # Serving again works (the port was released).
    await resolver.serve("c1", ns, [N1])
    assert a_records(await query(ns, "web")) == {"10.0.1.2"}


@root
async def test_serve_a_missing_namespace_fails_clearly(resolver: Resolver) -> None:
    from overlay_net.netlink import NetnsGone

    with pytest.raises(NetnsGone, match="does not exist"):
        await resolver.serve("gone", "/run/netns/orchdns-never-made", [N1])
    assert resolver.serving() == []



@root
async def test_port_taken_fails_clearly(resolver: Resolver, namespaces: list[str]) -> None:
    from overlay_net.netlink import entered

    ns = await new_ns(namespaces)

    def squat() -> socket.socket:
        with entered(ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.11", 53))
        return s

    with await asyncio.to_thread(squat):
        with pytest.raises(OSError, match=f"binding 127.0.0.11:53 in {ns}"):
            await resolver.serve("c1", ns, [N1])
        assert resolver.serving() == []
