"""The network state of one node, as plain frozen data.

This module owns two shapes:

* the *desired* state (`NodeState`): what the managers' tables say this node
  must have -- the overlay networks it takes part in, the local endpoints
  (container interfaces) and the remote peers (IP, MAC, node) of each network,
  and the node's egress settings. Constructing one validates it completely,
  so a bad table is rejected before anything touches the kernel; every
  problem is reported with the field path it concerns.
* the *observed* state (`ObservedState`): the same things as read back from
  the kernel (sandboxes, devices, FDB and neighbour entries, egress
  attachments, the nftables table), which `plan.plan()` compares with the
  desired state.

Strings are accepted for the address fields and converted to `ipaddress`
objects, so tables decoded from the wire can be passed as they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

VNI_MIN = 1
VNI_MAX = (1 << 24) - 1
MTU_MIN = 68
MTU_MAX = 65535
# A host link may be larger than any IP MTU: Linux's loopback is 65536.
UNDERLAY_MTU_MAX = 65536
# Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8) headers.
VXLAN_OVERHEAD = 50
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_MTU = DEFAULT_UNDERLAY_MTU - VXLAN_OVERHEAD
DEFAULT_EGRESS_SUBNET = "172.18.0.0/16"
VXLAN_PORT = 4789

# Same rule as api object ids, so manager ids fit; ':' never occurs, which the
# kernel-side ownership tags rely on.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Prefixes end up in netns file names and nftables identifiers (which must
# start with a letter).
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
IFNAME_MAX = 15
NETNS_PATH_MAX = 200


# -- errors --------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a desired state: the field path and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class StateError(ValueError):
    """A desired state (or a part of it) is invalid. `problems` lists every
    problem found, each naming its field; the message lists them all."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("invalid overlay network state: " + "; ".join(map(str, self.problems)))

    def within(self, path: str) -> StateError:
        """The same problems with their field paths put under path."""
        return StateError(Problem(f"{path}.{p.field}", p.message) for p in self.problems)


class _Checker:
    """Collects problems so that one error reports all of them."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, field_path: str, message: str) -> None:
        self.problems.append(Problem(field_path, message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise StateError(self.problems)


# -- conversions ---------------------------------------------------------------


def _as_v4(kind: type, value: Any, field_path: str, ck: _Checker, example: str) -> Any:
    if isinstance(value, kind):
        return value
    try:
        out = kind(value) if kind is not IPv4Network else IPv4Network(value, strict=True)
    except (ValueError, TypeError) as e:
        if isinstance(value, str) and ":" in value:
            ck.add(field_path, f"{value!r} is IPv6; only IPv4 overlays are supported")
        else:
            ck.add(field_path, f"{value!r} is not a valid IPv4 value ({e}); e.g. {example}")
        return None
    return out


def normalize_mac(value: str) -> str:
    """Lower-case colon form; raises ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.fullmatch(mac):
        raise ValueError(f"{value!r} is not a MAC address like 02:42:0a:00:00:02")
    first = int(mac[:2], 16)
    if first & 1:
        raise ValueError(f"{value!r} is a multicast address; an endpoint needs a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"{value!r} is the all-zero address")
    return mac


def mac_for_ip(ip: IPv4Address) -> str:
    """Docker's derived MAC: 02:42 followed by the four bytes of the address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def _check_id(value: Any, field_path: str, ck: _Checker) -> None:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        ck.add(field_path, f"{value!r} must be 1 to 64 letters, digits, '_', '.' or '-' (not starting with '_', '.', '-')")


def check_prefix(prefix: Any) -> str:
    """The prefix if it is a valid node name prefix; StateError otherwise."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise StateError([Problem("prefix", f"{prefix!r} must be 1 to 32 letters, digits, '_', '.' or '-', "
                                            "starting with a letter")])
    return prefix


def _check_ifname(value: Any, field_path: str, ck: _Checker) -> None:
    if not isinstance(value, str) or not value:
        ck.add(field_path, "must be a non-empty interface name, e.g. eth0")
    elif len(value) > IFNAME_MAX:
        ck.add(field_path, f"{value!r} is longer than {IFNAME_MAX} characters (the kernel's limit)")
    elif value in (".", "..", "lo") or any(c in value for c in "/: \t\n%"):
        ck.add(field_path, f"{value!r} is not a usable interface name")


def _check_mtu(value: Any, field_path: str, ck: _Checker) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not MTU_MIN <= value <= MTU_MAX:
        ck.add(field_path, f"{value!r} is out of range; an MTU is {MTU_MIN}..{MTU_MAX}")


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


# -- desired state ---------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """One overlay network as this node needs it.

    gateway: None means the first host address of the subnet. It is the
    address of the bridge in the network's sandbox (as in Swarm); containers
    do not route through it.
    mtu: the MTU of every interface of the network; the dataplane lowers it
    to underlay MTU - 50 when the underlay device cannot carry it.
    internal: no egress interface and no default route for its containers."""

    id: str
    vni: int
    subnet: IPv4Network
    gateway: IPv4Address | None = None
    mtu: int = DEFAULT_MTU
    internal: bool = False

    def __post_init__(self) -> None:
        ck = _Checker()
        _check_id(self.id, "id", ck)
        if isinstance(self.vni, bool) or not isinstance(self.vni, int) or not VNI_MIN <= self.vni <= VNI_MAX:
            ck.add("vni", f"{self.vni!r} is out of range; a VXLAN VNI is {VNI_MIN}..{VNI_MAX}")
        _check_mtu(self.mtu, "mtu", ck)
        if not isinstance(self.internal, bool):
            ck.add("internal", f"{self.internal!r} must be true or false")
        subnet = _as_v4(IPv4Network, self.subnet, "subnet", ck, "10.0.1.0/24")
        if subnet is not None:
            _set(self, "subnet", subnet)
            if subnet.prefixlen > 30:
                ck.add("subnet", f"{subnet} is too small; an overlay subnet needs at least /30")
        if self.gateway is None:
            if subnet is not None and subnet.prefixlen <= 30:
                _set(self, "gateway", subnet.network_address + 1)
        else:
            gw = _as_v4(IPv4Address, self.gateway, "gateway", ck, "10.0.1.1")
            if gw is not None:
                _set(self, "gateway", gw)
                if subnet is not None and not _is_host_of(gw, subnet):
                    ck.add("gateway", f"{gw} is not a host address of the subnet {subnet}")
        ck.raise_if_any()


def _is_host_of(ip: IPv4Address, subnet: IPv4Network) -> bool:
    return ip in subnet and ip not in (subnet.network_address, subnet.broadcast_address)


@dataclass(frozen=True)
class Endpoint:
    """A local container's interface on an overlay network.

    netns: the container's network namespace as a path (/proc/PID/ns/net or
    /run/netns/NAME). ifname: its name inside the container (eth0...).
    address: IP with the subnet's prefix length, e.g. 10.0.1.5/24.
    mac: "" means derived from the address (02:42:<IP bytes>), as Docker does."""

    id: str
    network_id: str
    netns: str
    ifname: str
    address: IPv4Interface
    mac: str = ""

    def __post_init__(self) -> None:
        ck = _Checker()
        _check_id(self.id, "id", ck)
        _check_id(self.network_id, "network_id", ck)
        if not isinstance(self.netns, str) or not self.netns.startswith("/"):
            ck.add("netns", f"{self.netns!r} must be an absolute path such as /proc/PID/ns/net")
        elif len(self.netns) > NETNS_PATH_MAX or any(c.isspace() for c in self.netns):
            ck.add("netns", f"{self.netns!r} must be at most {NETNS_PATH_MAX} characters without spaces")
        _check_ifname(self.ifname, "ifname", ck)
        if isinstance(self.address, str) and "/" not in self.address:
            ck.add("address", f"{self.address!r} needs the subnet's prefix length, e.g. {self.address}/24")
        else:
            addr = _as_v4(IPv4Interface, self.address, "address", ck, "10.0.1.5/24")
            if addr is not None:
                _set(self, "address", addr)
        if self.mac:
            try:
                _set(self, "mac", normalize_mac(self.mac))
            except ValueError as e:
                ck.add("mac", str(e))
        elif isinstance(self.address, IPv4Interface):
            _set(self, "mac", mac_for_ip(self.address.ip))
        ck.raise_if_any()


@dataclass(frozen=True)
class Peer:
    """A remote endpoint of an overlay network: its IP and MAC, and the
    underlay address of the node it runs on. mac "" means derived."""

    network_id: str
    ip: IPv4Address
    node: IPv4Address
    mac: str = ""

    def __post_init__(self) -> None:
        ck = _Checker()
        _check_id(self.network_id, "network_id", ck)
        ip = _as_v4(IPv4Address, self.ip, "ip", ck, "10.0.1.7")
        if ip is not None:
            _set(self, "ip", ip)
        node = _as_v4(IPv4Address, self.node, "node", ck, "192.168.1.12")
        if node is not None:
            _set(self, "node", node)
        if self.mac:
            try:
                _set(self, "mac", normalize_mac(self.mac))
            except ValueError as e:
                ck.add("mac", str(e))
        elif ip is not None:
            _set(self, "mac", mac_for_ip(ip))
        ck.raise_if_any()


@dataclass(frozen=True)
class Egress:
    """The node's egress bridge: containers of non-internal networks get one
    more interface on it (addresses given out by this node from `subnet`),
    a default route through its gateway, and are masqueraded behind the
    node's own address. mtu None: the underlay device's MTU."""

    subnet: IPv4Network = field(default_factory=lambda: IPv4Network(DEFAULT_EGRESS_SUBNET))
    mtu: int | None = None

    def __post_init__(self) -> None:
        ck = _Checker()
        subnet = _as_v4(IPv4Network, self.subnet, "subnet", ck, DEFAULT_EGRESS_SUBNET)
        if subnet is not None:
            _set(self, "subnet", subnet)
            if subnet.prefixlen > 29:
                ck.add("subnet", f"{subnet} is too small; the egress subnet needs at least /29")
        if self.mtu is not None:
            _check_mtu(self.mtu, "mtu", ck)
        ck.raise_if_any()

    @property
    def gateway(self) -> IPv4Interface:
        """The egress bridge's address: the subnet's first host."""
        return IPv4Interface((self.subnet.network_address + 1, self.subnet.prefixlen))


@dataclass(frozen=True)
class HostPort:
    """A port the node accepts on its own addresses and forwards to a
    container namespace (`netns`, which must have an egress interface) on
    port `target`: a published port of the routing mesh (to the node's
    ingress sandbox) or a host-mode port (to the task itself)."""

    protocol: str
    port: int
    netns: str
    target: int

    def __post_init__(self) -> None:
        ck = _Checker()
        if self.protocol not in ("tcp", "udp"):
            ck.add("protocol", f"{self.protocol!r} is not tcp or udp")
        for name in ("port", "target"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
                ck.add(name, f"{v!r} is not a port number 1..65535")
        if not isinstance(self.netns, str) or not self.netns.startswith("/"):
            ck.add("netns", f"{self.netns!r} must be an absolute path such as /run/netns/NAME")
        ck.raise_if_any()


@dataclass(frozen=True)
class NodeState:
    """Everything the overlay dataplane of one node must have.

    prefix: starts every name this node's dataplane makes in machine-wide
    places (sandbox namespaces, nftables table, ownership tags), e.g. "orch-".
    underlay_addr: this node's address on the underlay (VXLAN source).
    underlay_mtu: the underlay device's MTU; None lets the dataplane read it.

    Sandboxes are made only for networks with at least one local endpoint;
    peers of other networks are accepted and ignored."""

    prefix: str
    underlay_addr: IPv4Address
    networks: tuple[Network, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    peers: tuple[Peer, ...] = ()
    egress: Egress = field(default_factory=Egress)
    underlay_mtu: int | None = None
    published: tuple[HostPort, ...] = ()

    def __post_init__(self) -> None:
        ck = _Checker()
        try:
            check_prefix(self.prefix)
        except StateError as e:
            ck.problems.extend(e.problems)
        addr = _as_v4(IPv4Address, self.underlay_addr, "underlay_addr", ck, "192.168.1.11")
        if addr is not None:
            _set(self, "underlay_addr", addr)
        if self.underlay_mtu is not None:
            if (isinstance(self.underlay_mtu, bool) or not isinstance(self.underlay_mtu, int)
                    or not MTU_MIN + VXLAN_OVERHEAD <= self.underlay_mtu <= UNDERLAY_MTU_MAX):
                ck.add("underlay_mtu", f"{self.underlay_mtu!r} is out of range; VXLAN needs an underlay MTU of "
                       f"{MTU_MIN + VXLAN_OVERHEAD}..{UNDERLAY_MTU_MAX}")
        for name, kind in (("networks", Network), ("endpoints", Endpoint), ("peers", Peer),
                           ("published", HostPort)):
            items = getattr(self, name)
            if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
                ck.add(name, f"must be a sequence of {kind.__name__}")
                continue
            items = tuple(items)
            _set(self, name, items)
            for i, item in enumerate(items):
                if not isinstance(item, kind):
                    ck.add(f"{name}[{i}]", f"must be a {kind.__name__}, not {type(item).__name__}")
        if not isinstance(self.egress, Egress):
            ck.add("egress", f"must be an Egress, not {type(self.egress).__name__}")
        ck.raise_if_any()
        self._check_references(ck)
        ck.raise_if_any()

    # Cross-object rules. Paths name objects by id where they have one, which
    # survives reordering better than an index.
    def _check_references(self, ck: _Checker) -> None:
        nets: dict[str, Network] = {}
        vnis: dict[int, str] = {}
        for i, n in enumerate(self.networks):
            if n.id in nets:
                ck.add(f"networks[{i}].id", f"duplicate network id {n.id!r}")
                continue
            nets[n.id] = n
            if n.vni in vnis:
                ck.add(f"networks[{n.id}].vni", f"VNI {n.vni} is also used by network {vnis[n.vni]!r}")
            vnis[n.vni] = n.id
            if self.egress.subnet.overlaps(n.subnet):
                ck.add(f"networks[{n.id}].subnet",
                       f"{n.subnet} overlaps the egress subnet {self.egress.subnet}; choose another egress.subnet")

        ips: dict[tuple[str, IPv4Address], str] = {}
        macs: dict[tuple[str, str], str] = {}
        ep_ids: set[str] = set()
        ifnames: dict[tuple[str, str], str] = {}
        container_nets: dict[tuple[str, str], str] = {}
        for e in self.endpoints:
            p = f"endpoints[{e.id}]"
            if e.id in ep_ids:
                ck.add(f"{p}.id", f"duplicate endpoint id {e.id!r}")
                continue
            ep_ids.add(e.id)
            found = nets.get(e.network_id)
            if found is None:
                ck.add(f"{p}.network_id", f"unknown network {e.network_id!r}; add it to networks")
                continue
            n = found
            if e.address.network != n.subnet:
                if e.address.ip in n.subnet:
                    ck.add(f"{p}.address", f"{e.address} has prefix length /{e.address.network.prefixlen}, "
                           f"network {n.id!r} has subnet {n.subnet}")
                else:
                    ck.add(f"{p}.address", f"{e.address.ip} is outside network {n.id!r}'s subnet {n.subnet}")
                continue
            self._check_host_ip(ck, f"{p}.address", e.address.ip, n)
            key = (n.id, e.address.ip)
            if key in ips:
                ck.add(f"{p}.address", f"duplicate IP {e.address.ip} in network {n.id!r} (also {ips[key]})")
            ips[key] = f"endpoint {e.id}"
            mkey = (n.id, e.mac)
            if mkey in macs:
                ck.add(f"{p}.mac", f"duplicate MAC {e.mac} in network {n.id!r} (also {macs[mkey]})")
            macs[mkey] = f"endpoint {e.id}"
            ikey = (e.netns, e.ifname)
            if ikey in ifnames:
                ck.add(f"{p}.ifname", f"{e.netns} already has {e.ifname} for endpoint {ifnames[ikey]}")
            ifnames[ikey] = e.id
            ckey = (e.netns, n.id)
            if ckey in container_nets:
                ck.add(f"{p}.netns", f"{e.netns} is already on network {n.id!r} (endpoint {container_nets[ckey]})")
            container_nets[ckey] = e.id

        # One container on two networks whose subnets overlap could not tell
        # which interface an address is behind.
        by_netns: dict[str, list[Endpoint]] = {}
        for e in self.endpoints:
            if e.network_id in nets:
                by_netns.setdefault(e.netns, []).append(e)
        for netns, eps in by_netns.items():
            for i, a in enumerate(eps):
                for b in eps[i + 1:]:
                    if a.network_id != b.network_id and nets[a.network_id].subnet.overlaps(nets[b.network_id].subnet):
                        ck.add(f"endpoints[{b.id}].network_id",
                               f"{netns} is on networks {a.network_id!r} and {b.network_id!r} whose subnets "
                               f"overlap ({nets[a.network_id].subnet}, {nets[b.network_id].subnet}); "
                               "routing inside the container would be ambiguous")
        n_egress = len(self.egress_containers()) if not ck.problems else 0
        room = self.egress.subnet.num_addresses - 3
        if n_egress > room:
            ck.add("egress.subnet", f"{self.egress.subnet} has room for {room} containers, {n_egress} need egress")

        check_egress = not ck.problems
        egress = set(self.egress_containers()) if check_egress else set()
        ports: dict[tuple[str, int], int] = {}
        for i, hp in enumerate(self.published):
            p = f"published[{i}]"
            if (hp.protocol, hp.port) in ports:
                ck.add(f"{p}.port", f"{hp.port}/{hp.protocol} is also published[{ports[hp.protocol, hp.port]}]")
            ports[hp.protocol, hp.port] = i
            if check_egress and hp.netns not in egress:
                ck.add(f"{p}.netns", f"{hp.netns} has no egress interface (it is on no non-internal network)")

        for i, peer in enumerate(self.peers):
            p = f"peers[{i}]"
            found = nets.get(peer.network_id)
            if found is None:
                ck.add(f"{p}.network_id", f"unknown network {peer.network_id!r}; add it to networks")
                continue
            n = found
            if peer.node == self.underlay_addr:
                ck.add(f"{p}.node", f"{peer.node} is this node's own address; a local container is an endpoint, "
                       "not a peer")
            if peer.ip not in n.subnet:
                ck.add(f"{p}.ip", f"{peer.ip} is outside network {n.id!r}'s subnet {n.subnet}")
                continue
            self._check_host_ip(ck, f"{p}.ip", peer.ip, n)
            key = (n.id, peer.ip)
            if key in ips:
                ck.add(f"{p}.ip", f"duplicate IP {peer.ip} in network {n.id!r} (also {ips[key]})")
            ips[key] = f"peer {peer.ip}"
            mkey = (n.id, peer.mac)
            if mkey in macs:
                ck.add(f"{p}.mac", f"duplicate MAC {peer.mac} in network {n.id!r} (also {macs[mkey]})")
            macs[mkey] = f"peer {peer.ip}"

    @staticmethod
    def _check_host_ip(ck: _Checker, path: str, ip: IPv4Address, n: Network) -> None:
        if ip == n.gateway:
            ck.add(path, f"{ip} is network {n.id!r}'s gateway (the sandbox bridge's address)")
        elif ip in (n.subnet.network_address, n.subnet.broadcast_address):
            ck.add(path, f"{ip} is not a host address of {n.subnet}")

    # -- derived views ----------------------------------------------------------

    def network(self, network_id: str) -> Network:
        for n in self.networks:
            if n.id == network_id:
                return n
        raise KeyError(f"no network {network_id!r} in the desired state")

    def local_networks(self) -> tuple[Network, ...]:
        """Networks with at least one local endpoint: those that get a sandbox."""
        used = {e.network_id for e in self.endpoints}
        return tuple(n for n in self.networks if n.id in used)

    def mtu_of(self, network: Network) -> int:
        """The MTU actually used: the network's, lowered to what the underlay
        can carry with the VXLAN headers."""
        underlay = self.underlay_mtu if self.underlay_mtu is not None else DEFAULT_UNDERLAY_MTU
        return min(network.mtu, underlay - VXLAN_OVERHEAD)

    @property
    def egress_mtu(self) -> int:
        if self.egress.mtu is not None:
            return self.egress.mtu
        return min(self.underlay_mtu, MTU_MAX) if self.underlay_mtu is not None else DEFAULT_UNDERLAY_MTU

    def endpoints_of(self, netns: str) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.netns == netns)

    def egress_containers(self) -> tuple[str, ...]:
        """Container namespaces that get an egress interface: those on at
        least one non-internal network, in a stable order."""
        internal = {n.id: n.internal for n in self.networks}
        return tuple(sorted({e.netns for e in self.endpoints if internal.get(e.network_id) is False}))

    def egress_ifname(self, netns: str) -> str:
        """eth<N> with the lowest N the container's overlay interfaces leave free."""
        used = {e.ifname for e in self.endpoints_of(netns)}
        return next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)

    def peers_of(self, network_id: str) -> Iterator[Peer]:
        return (p for p in self.peers if p.network_id == network_id)


# -- observed state ------------------------------------------------------------------
# What the kernel holds, as read by netlink.observe(). These carry the facts
# the planner needs to decide; they are not validated (the kernel may hold
# anything, including half-made objects from a crash).


@dataclass(frozen=True)
class BridgeState:
    addresses: tuple[IPv4Interface, ...]
    mtu: int
    up: bool


@dataclass(frozen=True)
class VxlanState:
    vni: int
    local: IPv4Address | None
    port: int
    learning: bool
    proxy: bool
    mtu: int
    up: bool
    enslaved: bool  # port of the sandbox bridge


@dataclass(frozen=True)
class EndpointState:
    """A veth in a sandbox tagged as endpoint `endpoint_id`, and what its
    peer in the container looks like (container-side fields None when the
    peer cannot be found in `netns`)."""

    endpoint_id: str
    network_id: str
    netns: str
    ifname: str | None
    address: IPv4Interface | None  # None unless exactly one IPv4 address
    mac: str | None
    mtu: int | None
    up: bool  # both ends
    sandbox_mtu: int
    enslaved: bool
    pinned: bool = True  # a static bridge FDB entry ties mac to this port


@dataclass(frozen=True)
class SandboxState:
    network_id: str
    bridge: BridgeState | None
    vxlan: VxlanState | None
    fdb: frozenset[tuple[str, IPv4Address]]  # (mac, node) static VXLAN FDB entries
    neigh: frozenset[tuple[IPv4Address, str]]  # (ip, mac) permanent neighbours
    endpoints: tuple[EndpointState, ...] = ()
    stale_links: tuple[str, ...] = ()  # links in the sandbox that are none of ours
    usable: bool = True  # False: the netns file exists but cannot be entered


@dataclass(frozen=True)
class EgressAttachmentState:
    netns: str
    host_ifname: str
    ifname: str | None
    address: IPv4Interface | None
    default_via: IPv4Address | None
    mtu: int | None
    up: bool
    enslaved: bool
    isolated: bool


@dataclass(frozen=True)
class ObservedState:
    sandboxes: tuple[SandboxState, ...] = ()
    egress_bridge: BridgeState | None = None
    egress: tuple[EgressAttachmentState, ...] = ()
    forwarding: bool = False
    nft_fingerprint: str | None = None  # None: no table; "": a table without our mark
    underlay_mtu: int | None = None

    def sandbox(self, network_id: str) -> SandboxState | None:
        for s in self.sandboxes:
            if s.network_id == network_id:
                return s
        return None
