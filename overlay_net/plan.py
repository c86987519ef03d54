"""The reconciler: desired state + observed state -> ordered actions.

Pure: no I/O, no clock. `plan()` compares a validated `NodeState` with an
`ObservedState` read from the kernel and returns the actions that turn the
one into the other; applying them and planning again yields nothing, and a
converged node plans nothing at all (which is what lets a restarted daemon
adopt running networks without touching them).

Rules the planner follows:

* A network gets a sandbox only while it has a local endpoint; sandboxes of
  networks that are not desired or have no local endpoint are removed.
* Anything that exists but differs in identity (endpoint address/MAC/ifname/
  namespace, VXLAN VNI/source/port/flags) is removed and made again; only
  MTU and up/down are fixed in place.
* Remote peers are static VXLAN FDB entries (MAC -> node) and permanent
  neighbour entries (IP -> MAC) on the sandbox's VXLAN device, diffed as
  sets, so a peer that moved to another node or changed MAC loses its old
  entries. Nothing is ever flooded: an all-zero FDB entry is stale too.
* Egress: every container on a non-internal network gets one egress veth
  (the first free ethN) with an address this node hands out from the egress
  subnet (kept across restarts: taken from what is observed), a default route
  via the egress bridge; the bridge, IPv4 forwarding and the nftables table
  exist while any container needs egress.
* Order: everything that goes away first (egress veths, endpoints,
  sandboxes, wrong devices, stale entries), then what is made (sandboxes,
  devices, peer entries, the egress bridge and table, endpoints, egress
  veths) -- so a name freed by a removal can be reused in the same plan and
  peer entries exist before a container's first packet.

Each action lists the scopes it touches; the executor skips the later
actions of a scope whose earlier action failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import ClassVar

from . import nft
from .model import (
    VXLAN_PORT,
    BridgeState,
    Endpoint,
    EndpointState,
    Network,
    NodeState,
    ObservedState,
    SandboxState,
)
from .names import Naming

Scope = tuple[str, str]


# -- actions --------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    #: True when the action interrupts traffic that may be flowing.
    disruptive: ClassVar[bool] = False

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return ()

    def __str__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


@dataclass(frozen=True)
class _NetAction(Action):
    network_id: str

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("net", self.network_id),)


@dataclass(frozen=True)
class RemoveSandbox(_NetAction):
    """Delete the sandbox namespace with its devices and entries."""

    disruptive: ClassVar[bool] = True


@dataclass(frozen=True)
class CreateSandbox(_NetAction):
    """Create the (empty) sandbox namespace."""


@dataclass(frozen=True)
class CreateBridge(_NetAction):
    address: IPv4Interface
    mtu: int


@dataclass(frozen=True)
class ConfigureBridge(_NetAction):
    """Set the bridge's only address, MTU, and up."""

    address: IPv4Interface
    mtu: int


@dataclass(frozen=True)
class RemoveVxlan(_NetAction):
    disruptive: ClassVar[bool] = True


@dataclass(frozen=True)
class CreateVxlan(_NetAction):
    vni: int
    local: IPv4Address
    mtu: int


@dataclass(frozen=True)
class ConfigureVxlan(_NetAction):
    """Set MTU, enslave to the bridge, and up."""

    mtu: int


@dataclass(frozen=True)
class DelFdb(_NetAction):
    mac: str
    node: IPv4Address
    disruptive: ClassVar[bool] = True


@dataclass(frozen=True)
class AddFdb(_NetAction):
    mac: str
    node: IPv4Address


@dataclass(frozen=True)
class DelNeigh(_NetAction):
    ip: IPv4Address
    mac: str
    disruptive: ClassVar[bool] = True


@dataclass(frozen=True)
class SetNeigh(_NetAction):
    """Create or replace the permanent neighbour entry ip -> mac."""

    ip: IPv4Address
    mac: str


@dataclass(frozen=True)
class RemoveLink(_NetAction):
    """Delete a link in the sandbox that belongs to no endpoint (left by an
    attach that was interrupted before the link was tagged)."""

    ifname: str
    disruptive: ClassVar[bool] = True


@dataclass(frozen=True)
class DetachEndpoint(_NetAction):
    """Delete the endpoint's veth pair."""

    endpoint_id: str
    netns: str
    disruptive: ClassVar[bool] = True

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("net", self.network_id), ("netns", self.netns))


@dataclass(frozen=True)
class AttachEndpoint(Action):
    endpoint: Endpoint
    mtu: int

    @property
    def network_id(self) -> str:
        return self.endpoint.network_id

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("net", self.endpoint.network_id), ("netns", self.endpoint.netns))


@dataclass(frozen=True)
class ConfigureEndpoint(Action):
    """Set the MTU of both ends, enslave the sandbox end and pin the
    endpoint's MAC to it, and up both."""

    endpoint: Endpoint
    mtu: int

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("net", self.endpoint.network_id), ("netns", self.endpoint.netns))


@dataclass(frozen=True)
class CreateEgressBridge(Action):
    address: IPv4Interface
    mtu: int

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("egress", ""),)


@dataclass(frozen=True)
class ConfigureEgressBridge(Action):
    address: IPv4Interface
    mtu: int

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("egress", ""),)


@dataclass(frozen=True)
class RemoveEgressBridge(Action):
    disruptive: ClassVar[bool] = True


@dataclass(frozen=True)
class EnableForwarding(Action):
    """net.ipv4.ip_forward=1 in the host namespace (never turned off again:
    other software on the node may rely on it)."""

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("egress", ""),)


@dataclass(frozen=True)
class WriteNftTable(Action):
    body: str

    @property
    def fingerprint(self) -> str:
        return nft.fingerprint(self.body)

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("egress", ""),)

    def __str__(self) -> str:
        return f"WriteNftTable(fingerprint={self.fingerprint})"


@dataclass(frozen=True)
class DeleteNftTable(Action):
    disruptive: ClassVar[bool] = True


@dataclass(frozen=True)
class DetachEgress(Action):
    netns: str  # "" when the veth lost its tag
    host_ifname: str
    disruptive: ClassVar[bool] = True

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("netns", self.netns),)


@dataclass(frozen=True)
class AttachEgress(Action):
    netns: str
    ifname: str
    address: IPv4Interface
    gateway: IPv4Address
    mtu: int

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return (("egress", ""), ("netns", self.netns))


# -- planning ---------------------------------------------------------------------


def plan(desired: NodeState, observed: ObservedState, *, only_netns: str | None = None) -> list[Action]:
    """The actions that make observed match desired, in execution order.

    only_netns: restrict the plan to what one container needs (its
    endpoints and egress interface, the sandboxes, peer entries and egress
    plumbing they depend on), leaving everything else as it is."""
    removals: list[Action] = []
    creations: list[Action] = []
    wanted_nets = {n.id: n for n in desired.local_networks()}
    if only_netns is not None:
        mine = {e.network_id for e in desired.endpoints_of(only_netns)}
        wanted_nets = {k: v for k, v in wanted_nets.items() if k in mine}

    # Sandboxes that must go.
    if only_netns is None:
        for s in sorted(observed.sandboxes, key=lambda s: s.network_id):
            if s.network_id not in wanted_nets:
                removals.append(RemoveSandbox(s.network_id))

    # Endpoints observed anywhere, by id (an id seen twice: the extra is stale).
    observed_eps: dict[str, EndpointState] = {}
    stale_eps: list[EndpointState] = []
    for s in observed.sandboxes:
        if s.network_id not in wanted_nets or not s.usable:
            continue  # whole sandbox goes
        for ep in s.endpoints:
            if ep.endpoint_id in observed_eps:
                stale_eps.append(ep)
            else:
                observed_eps[ep.endpoint_id] = ep
    desired_eps = {e.id: e for e in desired.endpoints if e.network_id in wanted_nets}
    if only_netns is not None:
        desired_eps = {k: e for k, e in desired_eps.items() if e.netns == only_netns}
        observed_eps = {k: e for k, e in observed_eps.items() if e.netns == only_netns or k in desired_eps}
        stale_eps = [e for e in stale_eps if e.netns == only_netns]

    ep_detach: list[Action] = []
    ep_attach: list[Action] = []
    ep_fix: list[Action] = []
    for ep in stale_eps:
        ep_detach.append(DetachEndpoint(ep.network_id, ep.endpoint_id, ep.netns))
    for ep_id, ep in sorted(observed_eps.items()):
        want = desired_eps.get(ep_id)
        if want is None:
            if only_netns is None or ep.netns == only_netns:
                ep_detach.append(DetachEndpoint(ep.network_id, ep.endpoint_id, ep.netns))
            continue
        mtu = desired.mtu_of(wanted_nets[want.network_id])
        if not _same_endpoint(ep, want):
            ep_detach.append(DetachEndpoint(ep.network_id, ep.endpoint_id, ep.netns))
            ep_attach.append(AttachEndpoint(want, mtu))
        elif ep.mtu != mtu or ep.sandbox_mtu != mtu or not ep.up or not ep.enslaved or not ep.pinned:
            ep_fix.append(ConfigureEndpoint(want, mtu))
    for ep_id, want in sorted(desired_eps.items()):
        if ep_id not in observed_eps:
            ep_attach.append(AttachEndpoint(want, desired.mtu_of(wanted_nets[want.network_id])))

    # Per network: sandbox, bridge, VXLAN, peer entries.
    dev_removals: list[Action] = []
    entry_removals: list[Action] = []
    net_creations: list[Action] = []
    entry_creations: list[Action] = []
    for net_id, net in sorted(wanted_nets.items()):
        seen = observed.sandbox(net_id)
        mtu = desired.mtu_of(net)
        fresh_vxlan = False
        if seen is not None and not seen.usable:
            removals.append(RemoveSandbox(net_id))  # e.g. a netns file left without its mount
            seen = None
        if seen is None:
            net_creations.append(CreateSandbox(net_id))
        s = seen if seen is not None else SandboxState(net_id, None, None, frozenset(), frozenset())
        if only_netns is None:
            for link in s.stale_links:
                # Leftovers of an interrupted attach: no tag, so no endpoint.
                dev_removals.append(RemoveLink(net_id, link))
        gw = IPv4Interface((net.gateway, net.subnet.prefixlen))
        if s.bridge is None:
            net_creations.append(CreateBridge(net_id, gw, mtu))
        elif not _bridge_ok(s.bridge, gw, mtu):
            net_creations.append(ConfigureBridge(net_id, gw, mtu))
        vx = s.vxlan
        if vx is not None and (vx.vni, vx.local, vx.port, vx.learning, vx.proxy) != (
                net.vni, desired.underlay_addr, VXLAN_PORT, False, True):
            dev_removals.append(RemoveVxlan(net_id))
            vx = None
            fresh_vxlan = True
        if vx is None:
            net_creations.append(CreateVxlan(net_id, net.vni, desired.underlay_addr, mtu))
            fresh_vxlan = True
        elif vx.mtu != mtu or not vx.up or not vx.enslaved:
            net_creations.append(ConfigureVxlan(net_id, mtu))

        want_fdb = {(p.mac, p.node) for p in desired.peers_of(net_id)}
        want_neigh = {p.ip: p.mac for p in desired.peers_of(net_id)}
        have_fdb = set() if fresh_vxlan else set(s.fdb)
        have_neigh = {} if fresh_vxlan else dict(s.neigh)
        for mac, node in sorted(have_fdb - want_fdb, key=str):
            entry_removals.append(DelFdb(net_id, mac, node))
        for ip, mac in sorted(have_neigh.items()):
            if ip not in want_neigh:
                entry_removals.append(DelNeigh(net_id, ip, mac))
        for mac, node in sorted(want_fdb - have_fdb, key=str):
            entry_creations.append(AddFdb(net_id, mac, node))
        for ip, mac in sorted(want_neigh.items()):
            if have_neigh.get(ip) != mac:
                entry_creations.append(SetNeigh(net_id, ip, mac))

    eg_removals, eg_creations, eg_attach, eg_final = _plan_egress(desired, observed, only_netns)

    removals = eg_removals + ep_detach + removals + dev_removals + entry_removals
    creations = net_creations + entry_creations + eg_creations + ep_fix + ep_attach + eg_attach + eg_final
    return removals + creations


def _same_endpoint(ep: EndpointState, want: Endpoint) -> bool:
    return (ep.network_id, ep.netns, ep.ifname, ep.address, ep.mac) == (
        want.network_id, want.netns, want.ifname, want.address, want.mac)


def _bridge_ok(b: BridgeState, address: IPv4Interface, mtu: int) -> bool:
    return b.addresses == (address,) and b.mtu == mtu and b.up


def _plan_egress(
    desired: NodeState, observed: ObservedState, only_netns: str | None
) -> tuple[list[Action], list[Action], list[Action], list[Action]]:
    """(removals, plumbing creations, attachments, final removals)."""
    removals: list[Action] = []
    creations: list[Action] = []
    attach: list[Action] = []
    final: list[Action] = []
    eg = desired.egress
    gw = eg.gateway
    mtu = desired.egress_mtu
    containers = desired.egress_containers()
    needed = bool(containers)

    # Which observed attachments are kept: the right container, name,
    # address and wiring; each address once.
    kept: dict[str, IPv4Interface] = {}
    used: set[IPv4Address] = {gw.ip}
    by_netns = {a.netns: a for a in observed.egress}
    for a in sorted(observed.egress, key=lambda a: a.host_ifname):
        if by_netns.get(a.netns) is not a:
            ok = False  # a second attachment for the same container
        else:
            ok = (a.netns in containers
                  and a.ifname == desired.egress_ifname(a.netns)
                  and a.address is not None and a.address.network == eg.subnet
                  and a.address.ip not in used and a.address.ip != eg.subnet.broadcast_address
                  and a.default_via == gw.ip and a.mtu == mtu and a.up and a.enslaved and a.isolated
                  and observed.egress_bridge is not None)
        if ok:
            assert a.address is not None
            kept[a.netns] = a.address
            used.add(a.address.ip)
        elif only_netns is None or a.netns == only_netns:
            removals.append(DetachEgress(a.netns, a.host_ifname))

    if needed:
        if observed.egress_bridge is None:
            creations.append(CreateEgressBridge(gw, mtu))
        elif not _bridge_ok(observed.egress_bridge, gw, mtu):
            creations.append(ConfigureEgressBridge(gw, mtu))
        if not observed.forwarding:
            creations.append(EnableForwarding())
        hosts = _free_hosts(eg.subnet, used)
        addrs = dict(kept)
        for netns in containers:
            if netns in kept or (only_netns is not None and netns != only_netns):
                continue
            ip = next(hosts)
            addrs[netns] = IPv4Interface((ip, eg.subnet.prefixlen))
            attach.append(AttachEgress(netns, desired.egress_ifname(netns), addrs[netns], gw.ip, mtu))
        # Published ports go to the containers' egress addresses, known only
        # now; a container not attached yet (a one-container plan) is left
        # out until the next whole plan.
        forwards = [(hp.protocol, hp.port, addrs[hp.netns].ip, hp.target)
                    for hp in desired.published if hp.netns in addrs]
        body = nft.render_body(Naming(desired.prefix).egress_bridge, eg.subnet, forwards)
        if observed.nft_fingerprint != nft.fingerprint(body) and (
                only_netns is None or observed.nft_fingerprint is None):
            # (A one-container plan writes the table only when it is missing:
            # it does not know every container's address.)
            eg_table: Action | None = WriteNftTable(body)
        else:
            eg_table = None
        if eg_table is not None:
            # With forwards, after the attachments whose addresses they name.
            (final if forwards else creations).append(eg_table)
    elif only_netns is None:
        if observed.nft_fingerprint is not None:
            final.append(DeleteNftTable())
        if observed.egress_bridge is not None:
            final.append(RemoveEgressBridge())
    return removals, creations, attach, final


def _free_hosts(subnet: IPv4Network, used: set[IPv4Address]) -> Iterator[IPv4Address]:
    for ip in subnet.hosts():
        if ip not in used:
            used.add(ip)
            yield ip
    raise RuntimeError(f"egress subnet {subnet} is full")  # NodeState validation prevents this


def disruptive(actions: Iterable[Action]) -> list[Action]:
    """The actions among these that interrupt traffic."""
    return [a for a in actions if a.disruptive]
