"""Embedded DNS: the node's resolver at 127.0.0.11 inside every task's
network namespace, as dockerd's.

Two parts:

- `NameTable`, sans-I/O: the names of the cluster per network (service VIPs,
  `tasks.<service>`, dnsrr service names, aliases, task names, hostnames),
  updated one endpoint or one service at a time, and `resolve(networks,
  qname, qtype)`, which answers from the networks a container is on, says
  NXDOMAIN, or says the name is not the cluster's and must be forwarded.
- `Resolver`, the asyncio shell: one per node. For each container it opens a
  UDP socket and a TCP listening socket on 127.0.0.11:53 *inside* the
  container's namespace (a socket stays in the namespace it was created in,
  so the resolver is reachable from that container only and from nowhere
  else), answers from the table on the event loop, and forwards other names
  to the host's nameservers from the daemon's own namespace.

The wire format is dnslib's; nothing here parses packets by hand beyond the
two-byte id and flags needed to answer FORMERR to a packet dnslib refuses.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

from dnslib import A, DNSHeader, DNSQuestion, DNSRecord, PTR, QTYPE, RCODE, RR  # type: ignore[import-untyped]

from api.probe import NULL_PROBE, Probe

log = logging.getLogger(__name__)

DNS_ADDRESS = "127.0.0.11"
DNS_PORT = 53
# Short: names change as tasks come and go, and the resolver is one hop away.
TTL = 60
UDP_PAYLOAD = 512  # without EDNS (RFC 1035 4.2.1)
MAX_UDP_PAYLOAD = 4096  # what we honour from a client's EDNS OPT record
TASKS_PREFIX = "tasks."
REVERSE_SUFFIX = ".in-addr.arpa"

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class DnsError(ValueError):
    """A record given to the name table is invalid; the message names the field."""


# -- the name table (sans-I/O) ---------------------------------------------------


class Verdict(enum.Enum):
    NXDOMAIN = "nxdomain"  # a cluster-style name nobody has: answer NXDOMAIN at once
    FORWARD = "forward"  # not the cluster's: ask the host's nameservers


NXDOMAIN = Verdict.NXDOMAIN
FORWARD = Verdict.FORWARD


@dataclass(frozen=True)
class Answer:
    """The cluster knows the name: its IPv4 addresses (for A), or the names
    an address has (for PTR). Empty for a known name asked another type
    (AAAA, MX...): NOERROR with no records, so clients do not fall back to
    other nameservers or search domains."""

    addrs: tuple[IPv4Address, ...] = ()
    names: tuple[str, ...] = ()


class EndpointMode(enum.StrEnum):
    VIP = "vip"
    DNSRR = "dnsrr"


def _name(value: str, what: str, *, dotted: bool = True) -> str:
    """Normalise a DNS name (lower case, no trailing dot) or say what is wrong."""
    if not isinstance(value, str):
        raise DnsError(f"{what}: expected a string, got {type(value).__name__}")
    n = value.lower().rstrip(".")
    labels = n.split(".")
    if not n or len(n) > 253 or any(not _LABEL.match(lab) for lab in labels) or (not dotted and len(labels) > 1):
        raise DnsError(f"{what}: {value!r} is not a valid DNS name")
    return n


def _addr(value: str | IPv4Address, what: str) -> IPv4Address:
    try:
        return IPv4Interface(value).ip if isinstance(value, str) else IPv4Address(value)
    except ValueError:
        raise DnsError(f"{what}: {value!r} is not an IPv4 address") from None


@dataclass(frozen=True)
class NameEndpoint:
    """One task on one network, with what makes its names. Field names match
    `api.session.Endpoint`, whose `address` may carry a prefix length.

    Names it gives, on its network only: `tasks.<service_name>`, the service
    name itself when the service is dnsrr (or has no VIP), `task_name`
    (`<service>.<slot>.<task id>` as Swarm, derived when empty), each alias
    and the hostname. Only running tasks belong in the table: the caller adds
    an endpoint when its task runs and removes it when it stops."""

    network_id: str
    task_id: str
    address: IPv4Address | str
    service_name: str = ""
    slot: int = 0
    task_name: str = ""
    aliases: tuple[str, ...] = ()
    hostname: str = ""

    def __post_init__(self) -> None:
        where = f"endpoint {self.task_id!r} on network {self.network_id!r}"
        if not self.network_id or not self.task_id:
            raise DnsError(f"{where}: network_id and task_id are required")
        object.__setattr__(self, "address", _addr(self.address, f"{where}: address"))
        if self.service_name:
            object.__setattr__(self, "service_name", _name(self.service_name, f"{where}: service_name", dotted=False))
        tn = self.task_name
        if not tn and self.service_name:
            tn = f"{self.service_name}.{self.slot}.{self.task_id}" if self.slot else f"{self.service_name}.{self.task_id}"
        if tn:
            object.__setattr__(self, "task_name", _name(tn, f"{where}: task_name"))
        object.__setattr__(self, "aliases", tuple(_name(a, f"{where}: aliases[{i}]")
                                                  for i, a in enumerate(self.aliases)))
        if self.hostname:
            object.__setattr__(self, "hostname", _name(self.hostname, f"{where}: hostname"))

    def names(self) -> tuple[str, ...]:
        """The plain names (not tasks.X, not the service name) that point at it."""
        out = [n for n in (self.task_name, self.hostname) if n]
        return tuple(dict.fromkeys([*out, *self.aliases]))


@dataclass(frozen=True)
class ServiceName:
    """A service on one network: in vip mode its name answers `vip`; in
    dnsrr mode (or vip mode while the VIP is unknown) its tasks' addresses."""

    network_id: str
    name: str
    mode: EndpointMode = EndpointMode.VIP
    vip: IPv4Address | str | None = None

    def __post_init__(self) -> None:
        where = f"service {self.name!r} on network {self.network_id!r}"
        if not self.network_id:
            raise DnsError(f"{where}: network_id is required")
        object.__setattr__(self, "name", _name(self.name, f"{where}: name", dotted=False))
        try:
            object.__setattr__(self, "mode", EndpointMode(self.mode))
        except ValueError:
            raise DnsError(f"{where}: mode {self.mode!r} is not one of vip, dnsrr") from None
        if self.vip is not None:
            object.__setattr__(self, "vip", _addr(self.vip, f"{where}: vip"))


@dataclass
class _Net:
    """One network's indexes; every map is keyed so one endpoint's removal
    touches only its own entries."""

    name: str = ""
    names: dict[str, dict[str, IPv4Address]] = field(default_factory=dict)  # name -> task id -> ip
    tasks: dict[str, dict[str, IPv4Address]] = field(default_factory=dict)  # service -> task id -> ip
    services: dict[str, ServiceName] = field(default_factory=dict)
    ptr: dict[IPv4Address, dict[str, str]] = field(default_factory=dict)  # ip -> key -> name


class NameTable:
    """The cluster's names per network. Updates cost O(names of one
    endpoint); lookups O(networks of the container)."""

    def __init__(self, search_domains: Iterable[str] = ()) -> None:
        # The host's search domains (copied into containers' resolv.conf):
        # `web.corp.example` with search `corp.example` is the cluster's `web`.
        self.search_domains = tuple(_name(d, f"search_domains[{i}]") for i, d in enumerate(search_domains))
        self._nets: dict[str, _Net] = {}
        self._endpoints: dict[tuple[str, str], NameEndpoint] = {}

    # -- updates

    def _net(self, network_id: str) -> _Net:
        return self._nets.setdefault(network_id, _Net())

    def set_network_name(self, network_id: str, name: str) -> None:
        """Lets `<name>.<network name>` resolve within that network only."""
        self._net(network_id).name = _name(name, f"network {network_id!r}: name", dotted=False)

    def add_endpoint(self, ep: NameEndpoint) -> None:
        """Add or replace the endpoint of (ep.network_id, ep.task_id)."""
        self.remove_endpoint(ep.network_id, ep.task_id)
        self._endpoints[(ep.network_id, ep.task_id)] = ep
        net, ip = self._net(ep.network_id), IPv4Address(ep.address)
        for n in ep.names():
            net.names.setdefault(n, {})[ep.task_id] = ip
        if ep.service_name:
            net.tasks.setdefault(ep.service_name, {})[ep.task_id] = ip
        if ep.task_name or ep.hostname:
            net.ptr.setdefault(ip, {})[ep.task_id] = ep.task_name or ep.hostname

    def remove_endpoint(self, network_id: str, task_id: str) -> bool:
        ep = self._endpoints.pop((network_id, task_id), None)
        if ep is None:
            return False
        net, ip = self._nets[network_id], IPv4Address(ep.address)
        for n in ep.names():
            _drop(net.names, n, task_id)
        if ep.service_name:
            _drop(net.tasks, ep.service_name, task_id)
        _drop(net.ptr, ip, task_id)
        return True

    def set_service(self, svc: ServiceName) -> None:
        net = self._net(svc.network_id)
        old = net.services.get(svc.name)
        if old is not None and old.vip is not None:
            _drop(net.ptr, IPv4Address(old.vip), "vip:" + svc.name)
        net.services[svc.name] = svc
        if svc.vip is not None and svc.mode is EndpointMode.VIP:
            net.ptr.setdefault(IPv4Address(svc.vip), {})["vip:" + svc.name] = svc.name

    def remove_service(self, network_id: str, name: str) -> bool:
        net = self._nets.get(network_id)
        svc = net.services.pop(name.lower().rstrip("."), None) if net else None
        if net is None or svc is None:
            return False
        if svc.vip is not None:
            _drop(net.ptr, IPv4Address(svc.vip), "vip:" + svc.name)
        return True

    def remove_network(self, network_id: str) -> None:
        self._nets.pop(network_id, None)
        for key in [k for k in self._endpoints if k[0] == network_id]:
            del self._endpoints[key]

    def endpoints(self) -> list[NameEndpoint]:
        return list(self._endpoints.values())

    # -- lookups

    def resolve(self, networks: Iterable[str], qname: str, qtype: str = "A") -> Answer | Verdict:
        """What a container on `networks` gets for (qname, qtype): an
        Answer, NXDOMAIN, or FORWARD (not a cluster name)."""
        nets = [self._nets[n] for n in dict.fromkeys(networks) if n in self._nets]
        name = qname.lower().rstrip(".")
        qtype = qtype.upper()
        if name.endswith(REVERSE_SUFFIX):
            return self._reverse(nets, name, qtype)
        candidates = [name] + [name[: -len(d) - 1] for d in self.search_domains if name.endswith("." + d)]
        for cand in candidates:
            found = self._lookup(nets, cand)
            if found is not None:
                return Answer(addrs=found if qtype in ("A", "ANY") else ())
        # Single labels and tasks.X are the cluster's to say no to; so is
        # anything under one of the container's network names. A name under
        # a search domain may be a real host there: upstream decides.
        if "." not in name or name.startswith(TASKS_PREFIX) or any(
                n.name and name.endswith("." + n.name) for n in nets):
            return NXDOMAIN
        return FORWARD

    def _lookup(self, nets: list[_Net], name: str) -> tuple[IPv4Address, ...] | None:
        found: dict[IPv4Address, None] = {}
        known = False
        for net in nets:
            r = self._in_net(net, name)
            if r is None and net.name and name.endswith("." + net.name):
                r = self._in_net(net, name[: -len(net.name) - 1])
            if r is not None:
                known = True
                found.update(dict.fromkeys(r))
        return tuple(sorted(found)) if known else None

    @staticmethod
    def _in_net(net: _Net, name: str) -> list[IPv4Address] | None:
        if name.startswith(TASKS_PREFIX):
            svc = name[len(TASKS_PREFIX):]
            tasks = net.tasks.get(svc)
            return list(tasks.values()) if tasks else None
        out: list[IPv4Address] = list(net.names.get(name, {}).values())
        svc_rec = net.services.get(name)
        if svc_rec is not None and svc_rec.mode is EndpointMode.VIP and svc_rec.vip is not None:
            out.append(IPv4Address(svc_rec.vip))
        elif name in net.tasks:
            out.extend(net.tasks[name].values())
        # A known service with no running task and no VIP is still a name
        # of the cluster (empty answer), not something to ask upstream about.
        return out if out or svc_rec is not None else None

    @staticmethod
    def _reverse(nets: list[_Net], name: str, qtype: str) -> Answer | Verdict:
        parts = name[: -len(REVERSE_SUFFIX)].split(".")
        try:
            ip = IPv4Address(".".join(reversed(parts))) if len(parts) == 4 else None
        except ValueError:
            ip = None
        names = dict.fromkeys(n for net in nets if ip is not None for n in net.ptr.get(ip, {}).values())
        if not names:
            return FORWARD
        return Answer(names=tuple(sorted(names)) if qtype in ("PTR", "ANY") else ())


def _drop(index: dict, key: object, sub: str) -> None:  # type: ignore[type-arg]
    inner = index.get(key)
    if inner is not None:
        inner.pop(sub, None)
        if not inner:
            del index[key]


# -- wire format -------------------------------------------------------------------


def _formerr(data: bytes) -> bytes | None:
    """FORMERR for a packet dnslib cannot parse, if it has a header to answer."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:  # a response: never answer those (no reflection loops)
        return None
    return DNSRecord(DNSHeader(id=qid, qr=1, ra=1, rcode=RCODE.FORMERR)).pack()


def _udp_limit(q: DNSRecord) -> int:
    for rr in q.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_PAYLOAD, min(int(rr.rclass), MAX_UDP_PAYLOAD))
    return UDP_PAYLOAD


def _pack(reply: DNSRecord, limit: int | None) -> bytes:
    data = reply.pack()
    if limit is not None and len(data) > limit:
        # The client asks again over TCP.
        data = reply.truncate().pack()
    return data


def answer_locally(table: NameTable, networks: Sequence[str], q: DNSRecord) -> DNSRecord | None:
    """The reply to a parsed query from the table, or None to forward it."""
    reply = DNSRecord(DNSHeader(id=q.header.id, qr=1, rd=q.header.rd, ra=1), q=q.q if q.questions else None)
    if q.header.qr or q.header.opcode != 0:
        reply.header.rcode = RCODE.NOTIMP if not q.header.qr else RCODE.FORMERR
        return reply
    if len(q.questions) != 1:
        reply.header.rcode = RCODE.FORMERR
        return reply
    question: DNSQuestion = q.questions[0]
    qname = str(question.qname)
    result = table.resolve(networks, qname, QTYPE.get(question.qtype, str(question.qtype)))
    if result is FORWARD:
        return None
    reply.header.aa = 1
    if result is NXDOMAIN:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    assert isinstance(result, Answer)
    addrs = list(result.addrs)
    # Clients take the first address: spread them over tasks (as dnsrr does).
    random.shuffle(addrs)
    for ip in addrs:
        reply.add_answer(RR(qname, QTYPE.A, rdata=A(str(ip)), ttl=TTL))
    for n in result.names:
        reply.add_answer(RR(qname, QTYPE.PTR, rdata=PTR(n + "."), ttl=TTL))
    return reply


def _servfail(q: DNSRecord) -> DNSRecord:
    return DNSRecord(DNSHeader(id=q.header.id, qr=1, rd=q.header.rd, ra=1, rcode=RCODE.SERVFAIL), q=q.q)


def read_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[list[tuple[str, int]], list[str]]:
    """The IPv4 nameservers and search domains of a resolv.conf. Our own
    address is left out: forwarding to it would loop."""
    servers: list[tuple[str, int]] = []
    search: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        log.warning("reading %s: %s; no upstream nameservers", path, e)
        return servers, search
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ip = IPv4Address(words[1])
            except ValueError:
                continue  # IPv6 upstreams: the daemon forwards over IPv4 only
            if str(ip) != DNS_ADDRESS:
                servers.append((str(ip), DNS_PORT))
        elif len(words) >= 2 and words[0] in ("search", "domain"):
            search = [w for w in words[1:] if _LABEL.match(w.lower().rstrip(".").split(".")[0] or "-")]
    return servers, search


# -- the asyncio shell -------------------------------------------------------------


def _open_sockets(netns_path: str, address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP listening sockets on address:port inside netns_path.
    Runs on a worker thread: setns moves only that thread."""
    from .netlink import entered

    tcp: socket.socket | None = None
    with entered(netns_path):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((address, port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((address, port))
            tcp.listen(64)
        except BaseException as e:
            udp.close()
            if tcp is not None:
                tcp.close()
            if isinstance(e, OSError):
                # e.g. EADDRNOTAVAIL when the namespace's loopback is down.
                raise OSError(e.errno, f"binding {address}:{port} in {netns_path}: {e.strerror}") from e
            raise
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, key: str) -> None:
        self.resolver, self.key = resolver, key
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            out = self.resolver._handle(self.key, data, udp=True)
        except Exception:  # never let one packet stop the resolver
            log.exception("dns: answering a query from %s in %s", addr, self.key)
            return
        if isinstance(out, DNSRecord):
            self.resolver._spawn(self.key, self._forward(out, addr))
        elif out is not None:
            self.transport.sendto(out, addr)  # type: ignore[union-attr]

    async def _forward(self, q: DNSRecord, addr: tuple[str, int]) -> None:
        try:
            data = await self.resolver._forward(q, udp=True)
        except Exception:
            log.exception("dns: forwarding a query from %s in %s", addr, self.key)
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for replies to clients that went away


@dataclass
class _Served:
    networks: tuple[str, ...]
    udp: asyncio.DatagramTransport
    server: asyncio.Server
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


class Resolver:
    """The node's embedded DNS server. One per daemon; `serve` one key (a
    container or task id) per network namespace.

    upstreams: (ip, port) pairs to forward other names to; None reads the
    nameservers of `resolv_conf`. Forwarding goes out from the namespace of
    the thread running the event loop (the daemon's)."""

    def __init__(self, table: NameTable | None = None, *, upstreams: Sequence[tuple[str, int]] | None = None,
                 resolv_conf: str = "/etc/resolv.conf", forward_timeout: float = 2.0,
                 address: str = DNS_ADDRESS, port: int = DNS_PORT, max_forwards: int = 256,
                 probe: Probe = NULL_PROBE) -> None:
        self.probe = probe  # queries answered and their latency, for the daemon's metrics
        if upstreams is None:
            upstreams, search = read_resolv_conf(resolv_conf)
            if table is None:
                table = NameTable(search)
        self.table = table if table is not None else NameTable()
        self.upstreams = [(str(IPv4Address(h)), int(p)) for h, p in upstreams]
        self.forward_timeout = forward_timeout
        self.address, self.port = address, port
        self._served: dict[str, _Served] = {}
        # Bounds what a container flooding unknown names costs the daemon.
        self._forwards = asyncio.Semaphore(max_forwards)

    # -- state

    def update(self, table: NameTable) -> None:
        """Answer from another table from now on (incremental changes go
        through `self.table`'s own methods)."""
        self.table = table

    def set_networks(self, key: str, networks: Iterable[str]) -> None:
        """The networks a served container is on changed (connect/disconnect)."""
        self._served[key].networks = tuple(networks)

    def serving(self) -> list[str]:
        return sorted(self._served)

    # -- lifetimes

    async def serve(self, key: str, netns_path: str, networks: Iterable[str]) -> None:
        """Answer at address:port inside netns_path for a container on
        `networks`. Raises NetnsGone if the namespace does not exist,
        OSError if the address is taken there. Serving an already served
        key only updates its networks."""
        if key in self._served:
            self.set_networks(key, networks)
            return
        udp_sock, tcp_sock = await asyncio.to_thread(_open_sockets, netns_path, self.address, self.port)
        loop = asyncio.get_running_loop()
        try:
            udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self, key), sock=udp_sock)
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        try:
            server = await asyncio.start_server(lambda r, w: self._tcp(key, r, w), sock=tcp_sock)
        except BaseException:
            udp.close()
            tcp_sock.close()
            raise
        if key in self._served:  # a concurrent serve() of the same key won the race
            udp.close()
            server.close()
            self.set_networks(key, networks)
            return
        self._served[key] = _Served(tuple(networks), udp, server)

    async def stop_serving(self, key: str) -> bool:
        """Close the key's sockets (which releases its namespace) and drop
        its queries in flight."""
        s = self._served.pop(key, None)
        if s is None:
            return False
        s.udp.close()
        s.server.close()
        for w in list(s.writers):
            w.close()
        for t in list(s.tasks):
            t.cancel()
        if s.tasks:
            await asyncio.gather(*s.tasks, return_exceptions=True)
        await s.server.wait_closed()
        return True

    async def close(self) -> None:
        for key in list(self._served):
            await self.stop_serving(key)

    def _spawn(self, key: str, coro: object) -> None:
        s = self._served.get(key)
        if s is None:
            coro.close()  # type: ignore[attr-defined]
            return
        t: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        s.tasks.add(t)
        t.add_done_callback(s.tasks.discard)

    # -- answering

    def _handle(self, key: str, data: bytes, *, udp: bool) -> bytes | bytearray | DNSRecord | None:
        """Bytes to send back, a query to forward, or None (drop)."""
        s = self._served.get(key)
        if s is None:
            return None
        try:
            q = DNSRecord.parse(data)
        except Exception:  # dnslib raises several kinds on malformed input
            return _formerr(data)
        if q.header.qr:
            return None  # a response sent to us: drop, never answer
        t0 = time.perf_counter()
        reply = answer_locally(self.table, s.networks, q)
        if reply is None:
            return q
        out = _pack(reply, _udp_limit(q) if udp else None)
        self.probe.dns_query("local", time.perf_counter() - t0)
        return out

    async def _forward(self, q: DNSRecord, *, udp: bool) -> bytes:
        """Ask the upstreams in turn over UDP within forward_timeout;
        SERVFAIL when none answers."""
        t0 = time.perf_counter()
        try:
            return await self._ask_upstreams(q, udp=udp)
        finally:
            self.probe.dns_query("forwarded", time.perf_counter() - t0)

    async def _ask_upstreams(self, q: DNSRecord, *, udp: bool) -> bytes:
        limit = _udp_limit(q) if udp else None
        if not self.upstreams or self._forwards.locked():
            return _pack(_servfail(q), limit)
        async with self._forwards:
            data = q.pack()
            per = self.forward_timeout / len(self.upstreams)
            for host, port in self.upstreams:
                try:
                    raw = await asyncio.wait_for(self._ask_udp(data, q.header.id, host, port), per)
                    if not udp and len(raw) > 2 and raw[2] & 0x02:
                        # Truncated for UDP; the client came over TCP for all of it.
                        raw = await asyncio.wait_for(self._ask_tcp(data, host, port), per)
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    continue
                if not udp:
                    return raw
                return raw if len(raw) <= limit else _truncated(raw)  # type: ignore[operator]
        return _pack(_servfail(q), limit)

    async def _ask_udp(self, data: bytes, qid: int, host: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        # A fresh socket per query: a random source port, and a reply can
        # only come from the upstream we connected to.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.connect((host, port))
            await loop.sock_sendall(s, data)
            while True:
                raw = await loop.sock_recv(s, 65535)
                if len(raw) >= 2 and struct.unpack("!H", raw[:2])[0] == qid:
                    return raw

    @staticmethod
    async def _ask_tcp(data: bytes, host: str, port: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(size)
        finally:
            writer.close()

    async def _tcp(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = self._served.get(key)
        if s is None:
            writer.close()
            return
        s.writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10.0)
                (size,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(size), 10.0)
                out = self._handle(key, data, udp=False)
                if out is None:
                    return  # not a query: hang up
                if isinstance(out, DNSRecord):
                    out = await self._forward(out, udp=False)
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("dns: a TCP query in %s", key)
        finally:
            s.writers.discard(writer)
            writer.close()


def _truncated(raw: bytes) -> bytes:
    """An upstream answer too big for the client's UDP limit, cut to its
    header and question with TC set (the client retries over TCP)."""
    try:
        return DNSRecord.parse(raw).truncate().pack()
    except Exception:  # an upstream answer dnslib cannot read: pass it on whole
        return raw


__all__ = [
    "Answer", "DnsError", "EndpointMode", "FORWARD", "NXDOMAIN", "NameEndpoint", "NameTable", "Resolver",
    "ServiceName", "Verdict", "answer_locally", "read_resolv_conf",
]
