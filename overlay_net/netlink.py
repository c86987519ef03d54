"""Kernel I/O of the overlay dataplane, with pyroute2: observe what this
node's kernel holds, execute planned actions, tear everything down.

Synchronous and meant for the dataplane's own worker thread (manager.py): a
netlink socket belongs to the network namespace it was created in, so
`Kernel` opens its sockets after entering a namespace with setns(2) on the
calling thread and returns at once -- setns changes only that thread, and a
fresh socket costs no child process (pyroute2's own `netns=` argument forks
one per socket). The same trick writes and lists the nftables table
(libnftables in this thread: no fork of the daemon) and reads /proc/sys/net
in the host namespace, which lets tests give every simulated host its own.

The `host` namespace is where the underlay lives: the VXLAN devices' UDP
sockets, the egress bridge and the nftables table. None means the namespace
the worker thread started in (the daemon's own, on a real node).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface
from socket import AF_INET
from typing import Any

from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from api.probe import NULL_PROBE, Probe

from . import nft, nftlib
from .model import (
    VXLAN_PORT,
    BridgeState,
    EgressAttachmentState,
    EndpointState,
    NodeState,
    ObservedState,
    SandboxState,
    VxlanState,
)
from .names import NETNS_DIR, SANDBOX_BRIDGE, SANDBOX_VXLAN, Naming
from .plan import (
    Action,
    AddFdb,
    AttachEgress,
    AttachEndpoint,
    ConfigureBridge,
    ConfigureEgressBridge,
    ConfigureEndpoint,
    ConfigureVxlan,
    CreateBridge,
    CreateEgressBridge,
    CreateSandbox,
    CreateVxlan,
    DeleteNftTable,
    DelFdb,
    DelNeigh,
    DetachEgress,
    DetachEndpoint,
    EnableForwarding,
    RemoveEgressBridge,
    RemoveLink,
    RemoveSandbox,
    RemoveVxlan,
    SetNeigh,
    WriteNftTable,
)

CLONE_NEWNET = 0x40000000
IFF_UP = 0x1
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_MASTER = 0x04
NUD_NOARP = 0x40
MAIN_TABLE = 254
AF_BRIDGE = 7


class DataplaneError(Exception):
    """Programming the kernel failed; the message says what and where."""


class NetnsGone(DataplaneError):
    """A network namespace path does not exist (a container that is gone)."""


# -- namespaces ------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextmanager
def entered(path: str | None) -> Iterator[None]:
    """Run the block with the calling thread in the network namespace at
    path (None: stay). Only the calling thread moves."""
    if path is None:
        yield
        return
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(f"network namespace {path} does not exist") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            # If this failed the thread would stay in the wrong namespace and
            # every later socket would land there: nothing sensible is left
            # to do but stop the process loudly.
            try:
                _setns(home)
            except OSError as e:  # pragma: no cover - cannot happen with a valid fd
                os.write(2, f"overlay_net: cannot return to the home netns: {e}\n".encode())
                os._exit(70)
    finally:
        os.close(home)


def _quiet(fn: Callable[[], Any], *codes: int) -> None:
    """Call fn, ignoring netlink errors with these codes (already gone...)."""
    try:
        fn()
    except NetlinkError as e:
        if e.code not in codes:
            raise


def _attr(msg: Any, *path: str) -> Any:
    return msg.get_nested(*path) if len(path) > 1 else msg.get_attr(path[0])


def _kind(link: Any) -> str | None:
    kind = _attr(link, "IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind is not None else None


def _up(link: Any) -> bool:
    return bool(link["flags"] & IFF_UP)


def _isolated(link: Any) -> bool:
    return bool(_attr(link, "IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_ISOLATED"))


_EgressKey = tuple[int, Any, Any]
"""An egress veth's host side as observed: (ifindex, peer ifindex, alias
naming the container's namespace). The same key means the same link."""


# -- the kernel of one node ---------------------------------------------------------


class Kernel:
    """Observe and change the overlay state of one node. Not thread-safe: one
    thread uses it, between `open_session()` and `close_session()` calls."""

    def __init__(self, prefix: str, host_netns: str | None = None) -> None:
        self.naming = Naming(prefix)
        self.host_netns = host_netns
        self._socks: dict[str | None, IPRoute] = {}
        self._coming_up: list[tuple[str | None, str]] = []
        # Egress attachments as last observed, by their host side: what a
        # one-container observation takes for the other containers'.
        self._egress_seen: dict[_EgressKey, EgressAttachmentState] = {}
        self.probe: Probe = NULL_PROBE  # counts nftables writes (see NetworkDataplane.probe)

    # -- sockets ------------------------------------------------------------------

    def ipr(self, path: str | None = None) -> IPRoute:
        """A netlink socket in the namespace at path (None: the host's)."""
        sock = self._socks.get(path)
        if sock is None:
            with entered(path if path is not None else self.host_netns):
                sock = IPRoute()
            self._socks[path] = sock
        return sock

    def _drop(self, path: str | None) -> None:
        sock = self._socks.pop(path, None)
        if sock is not None:
            sock.close()

    def close_session(self) -> None:
        self._coming_up.clear()
        for path in list(self._socks):
            self._drop(path)

    def settle(self, timeout: float = 2.0) -> list[str]:
        """Wait until the veths brought up in this session are operationally
        up; those that are not after timeout (they may still come up).

        Until the kernel's link watcher has seen a new veth's carrier, its
        queue discipline drops every packet; the watcher runs at most once a
        second for events it does not deem urgent -- e.g. when the two ends
        happen to have the same ifindex in their namespaces -- so a first
        ARP request could be lost and the first packet delayed by a second.
        Waiting here means traffic flows when apply returns."""
        deadline = time.monotonic() + timeout
        pending = list(dict.fromkeys(self._coming_up))
        self._coming_up.clear()
        while pending:
            still = []
            for path, ifname in pending:
                try:
                    link = self._link(path, ifname)
                except (NetnsGone, NetlinkError):
                    continue  # gone meanwhile: nothing to wait for
                if link is not None and link.get_attr("IFLA_OPERSTATE") not in ("UP", "UNKNOWN"):
                    still.append((path, ifname))
            pending = still
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return [f"{path or 'host'}:{ifname}" for path, ifname in pending]

    @contextmanager
    def in_host(self) -> Iterator[None]:
        with entered(self.host_netns):
            yield

    def _link(self, path: str | None, ifname: str) -> Any | None:
        idx = self.ipr(path).link_lookup(ifname=ifname)
        return self.ipr(path).get_links(idx[0])[0] if idx else None

    def _index(self, path: str | None, ifname: str) -> int:
        idx = self.ipr(path).link_lookup(ifname=ifname)
        if not idx:
            where = path or "the host namespace"
            raise DataplaneError(f"interface {ifname} not found in {where}")
        return int(idx[0])

    def _addresses(self, path: str | None, index: int) -> tuple[IPv4Interface, ...]:
        out = []
        for a in self.ipr(path).get_addr(family=AF_INET, index=index):
            out.append(IPv4Interface((a.get_attr("IFA_ADDRESS"), a["prefixlen"])))
        return tuple(sorted(out))

    # -- observation --------------------------------------------------------------------

    def sandbox_names(self) -> list[str]:
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if self.naming.network_of_ns(n) is not None)

    def observe(self, underlay_addr: IPv4Address, *, only_netns: str | None = None,
                networks: Collection[str] = ()) -> ObservedState:
        """What the kernel holds for this node's overlay.

        only_netns (with the `networks` its endpoints are on): what a plan
        for that one container reads (plan(..., only_netns=)), without the
        cost of every other container on the node: only those networks'
        sandboxes, and no look into other containers' namespaces (their
        endpoints are listed without their container-side facts; their
        egress attachments come from what an earlier observation saw when
        the host side is the same link, peer and alias). Without it
        (the whole-node sync), everything is read."""
        names = self.sandbox_names()
        if only_netns is not None:
            names = [n for n in names if self.naming.network_of_ns(n) in networks]
        sandboxes = tuple(self._observe_sandbox(n, only_netns) for n in names)
        host = self.ipr(None)
        underlay_mtu = None
        for a in host.get_addr(family=AF_INET):
            if a.get_attr("IFA_ADDRESS") == str(underlay_addr):
                underlay_mtu = host.get_links(a["index"])[0].get_attr("IFLA_MTU")
                break
        bridge = None
        egress: list[EgressAttachmentState] = []
        gw_index = None
        for link in host.get_links():
            if link.get_attr("IFLA_IFNAME") == self.naming.egress_bridge and _kind(link) == "bridge":
                gw_index = link["index"]
                bridge = BridgeState(self._addresses(None, link["index"]), link.get_attr("IFLA_MTU"), _up(link))
        seen: dict[_EgressKey, EgressAttachmentState] = {}
        for link in host.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if _kind(link) == "veth" and self.naming.is_egress_host_if(name):
                key = (link["index"], link.get_attr("IFLA_LINK"), link.get_attr("IFLA_IFALIAS"))
                known = self._egress_seen.get(key)
                if only_netns is not None and known is not None and known.netns != only_netns:
                    a = dataclasses.replace(
                        known, up=known.up and _up(link), isolated=_isolated(link),
                        enslaved=gw_index is not None and link.get_attr("IFLA_MASTER") == gw_index)
                else:
                    a = self._observe_egress(link, gw_index)
                seen[key] = a
                egress.append(a)
        self._egress_seen = seen
        with self.in_host():
            with open("/proc/sys/net/ipv4/ip_forward") as f:
                forwarding = f.read().strip() == "1"
        listed = self._nft_table()
        fp = nft.parse_fingerprint(listed) if listed is not None else None
        return ObservedState(sandboxes=sandboxes, egress_bridge=bridge, egress=tuple(egress),
                             forwarding=forwarding, nft_fingerprint=fp, underlay_mtu=underlay_mtu)

    def _peer_in(self, path: str, local_index: int, peer_index: int | None) -> Any | None:
        """The veth at peer_index in the namespace at path, if it is the
        other end of local_index."""
        if not path or peer_index is None or not os.path.exists(path):
            return None
        try:
            links = self.ipr(path).get_links(peer_index)
        except (NetlinkError, NetnsGone, OSError):
            return None  # gone, or not a namespace: the endpoint is re-made
        if not links or _kind(links[0]) != "veth" or links[0].get_attr("IFLA_LINK") != local_index:
            return None
        return links[0]

    def _observe_sandbox(self, ns_name: str, only_netns: str | None = None) -> SandboxState:
        net_id = self.naming.network_of_ns(ns_name)
        assert net_id is not None
        path = f"{NETNS_DIR}/{ns_name}"
        try:
            ipr = self.ipr(path)
        except (OSError, NetnsGone):
            # A file without a namespace mounted on it (an interrupted
            # create, a crash): remove and make again.
            return SandboxState(net_id, None, None, frozenset(), frozenset(), usable=False)
        links = list(ipr.get_links())
        br = next((x for x in links if x.get_attr("IFLA_IFNAME") == SANDBOX_BRIDGE and _kind(x) == "bridge"), None)
        vx = next((x for x in links if x.get_attr("IFLA_IFNAME") == SANDBOX_VXLAN and _kind(x) == "vxlan"), None)
        bridge = None
        if br is not None:
            bridge = BridgeState(self._addresses(path, br["index"]), br.get_attr("IFLA_MTU"), _up(br))
        vxlan = None
        fdb: set[tuple[str, IPv4Address]] = set()
        neigh: set[tuple[IPv4Address, str]] = set()
        if vx is not None:
            data = vx.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
            local = data.get_attr("IFLA_VXLAN_LOCAL")
            vxlan = VxlanState(
                vni=data.get_attr("IFLA_VXLAN_ID"),
                local=IPv4Address(local) if local else None,
                port=data.get_attr("IFLA_VXLAN_PORT"),
                learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
                proxy=bool(data.get_attr("IFLA_VXLAN_PROXY")),
                mtu=vx.get_attr("IFLA_MTU"),
                up=_up(vx),
                enslaved=br is not None and vx.get_attr("IFLA_MASTER") == br["index"],
            )
        pinned: set[tuple[int, str]] = set()  # (port, mac) static bridge entries
        for m in ipr.fdb("dump"):
            dst = m.get_attr("NDA_DST")
            if vx is not None and m["ifindex"] == vx["index"] and dst and m["flags"] & NTF_SELF:
                fdb.add((m.get_attr("NDA_LLADDR"), IPv4Address(dst)))
            elif m.get_attr("NDA_MASTER") and m["state"] & NUD_NOARP and not m["state"] & NUD_PERMANENT:
                pinned.add((m["ifindex"], m.get_attr("NDA_LLADDR")))
        if vx is not None:
            for m in ipr.neigh("dump", ifindex=vx["index"], family=AF_INET):
                if m["ifindex"] == vx["index"] and m["state"] & NUD_PERMANENT and m.get_attr("NDA_LLADDR"):
                    neigh.add((IPv4Address(m.get_attr("NDA_DST")), m.get_attr("NDA_LLADDR")))
        endpoints: list[EndpointState] = []
        stale: list[str] = []
        for link in links:
            name = link.get_attr("IFLA_IFNAME")
            if link is br or link is vx or name == "lo":
                continue
            tag = self.naming.parse_endpoint_tag(link.get_attr("IFLA_IFALIAS"))
            if _kind(link) != "veth" or tag is None or name != self.naming.endpoint_if(tag[0]):
                stale.append(name)
                continue
            ep_id, ep_netns = tag
            look = only_netns is None or ep_netns == only_netns  # (another container's: not read)
            peer = self._peer_in(ep_netns, link["index"], link.get_attr("IFLA_LINK")) if look else None
            ifname = address = mac = mtu = None
            up = _up(link)
            if peer is not None:
                ifname = peer.get_attr("IFLA_IFNAME")
                addrs = self._addresses(ep_netns, peer["index"])
                address = addrs[0] if len(addrs) == 1 else None
                mac = peer.get_attr("IFLA_ADDRESS")
                mtu = peer.get_attr("IFLA_MTU")
                up = up and _up(peer)
            endpoints.append(EndpointState(
                endpoint_id=ep_id, network_id=net_id, netns=ep_netns, ifname=ifname, address=address,
                mac=mac, mtu=mtu, up=up, sandbox_mtu=link.get_attr("IFLA_MTU"),
                pinned=mac is not None and (link["index"], mac) in pinned,
                enslaved=br is not None and link.get_attr("IFLA_MASTER") == br["index"],
            ))
        return SandboxState(net_id, bridge, vxlan, frozenset(fdb), frozenset(neigh),
                            tuple(sorted(endpoints, key=lambda e: e.endpoint_id)), tuple(sorted(stale)))

    def _observe_egress(self, link: Any, gw_index: int | None) -> EgressAttachmentState:
        netns_path = self.naming.parse_egress_tag(link.get_attr("IFLA_IFALIAS")) or ""
        host_if = link.get_attr("IFLA_IFNAME")
        if netns_path and self.naming.egress_host_if(netns_path) != host_if:
            netns_path = ""  # tag and name disagree: not one we made this way
        peer = self._peer_in(netns_path, link["index"], link.get_attr("IFLA_LINK"))
        ifname = address = via = mtu = None
        up = _up(link)
        if peer is not None:
            ifname = peer.get_attr("IFLA_IFNAME")
            addrs = self._addresses(netns_path, peer["index"])
            address = addrs[0] if len(addrs) == 1 else None
            mtu = peer.get_attr("IFLA_MTU") if peer.get_attr("IFLA_MTU") == link.get_attr("IFLA_MTU") else None
            up = up and _up(peer)
            for r in self.ipr(netns_path).get_routes(family=AF_INET, table=MAIN_TABLE):
                if r["dst_len"] == 0 and r.get_attr("RTA_OIF") == peer["index"] and r.get_attr("RTA_GATEWAY"):
                    via = IPv4Address(r.get_attr("RTA_GATEWAY"))
        isolated = _isolated(link)
        return EgressAttachmentState(
            netns=netns_path, host_ifname=host_if, ifname=ifname, address=address, default_via=via,
            mtu=mtu, up=up, enslaved=gw_index is not None and link.get_attr("IFLA_MASTER") == gw_index,
            isolated=isolated,
        )

    # -- execution ----------------------------------------------------------------------

    def execute(self, action: Action, desired: NodeState) -> None:
        handler = getattr(self, f"_do_{type(action).__name__}", None)
        if handler is None:  # pragma: no cover - every action has a handler
            raise DataplaneError(f"no executor for {type(action).__name__}")
        try:
            handler(action, desired)
        except NetlinkError as e:
            raise DataplaneError(f"{action}: netlink error {e.code} ({os.strerror(e.code)})") from e

    # sandbox and its devices

    def _sandbox(self, network_id: str) -> str:
        path = self.naming.sandbox_path(network_id)
        if not os.path.exists(path):
            raise NetnsGone(f"sandbox {path} of network {network_id} does not exist")
        return path

    def _do_CreateSandbox(self, a: CreateSandbox, desired: NodeState) -> None:
        # pyroute2 makes /run/netns a shared mount and forks a child that
        # unshares and bind-mounts its namespace, as iproute2 does.
        netns.create(self.naming.sandbox_ns(a.network_id))

    def _do_RemoveSandbox(self, a: RemoveSandbox, desired: NodeState) -> None:
        self._remove_sandbox(self.naming.sandbox_ns(a.network_id))

    def _remove_sandbox(self, ns_name: str) -> None:
        path = f"{NETNS_DIR}/{ns_name}"
        # Delete the devices explicitly: the namespace itself is destroyed
        # asynchronously, and until then its VXLAN would keep the VNI busy
        # and its veths would keep the containers' interface names taken.
        try:
            ipr = self.ipr(path)
            for link in ipr.get_links():
                if _kind(link) in ("vxlan", "veth"):
                    _quiet(lambda: ipr.link("del", index=link["index"]), errno.ENODEV)
        except (NetnsGone, OSError):
            pass  # nothing mounted there: only the file is left to remove
        self._drop(path)
        try:
            netns.remove(ns_name)
        except FileNotFoundError:
            pass

    def _do_CreateBridge(self, a: CreateBridge, desired: NodeState) -> None:
        path = self._sandbox(a.network_id)
        ipr = self.ipr(path)
        ipr.link("add", ifname=SANDBOX_BRIDGE, kind="bridge", mtu=a.mtu, br_stp_state=0)
        idx = self._index(path, SANDBOX_BRIDGE)
        ipr.link("set", index=idx, ifalias=self.naming.network_tag(a.network_id))
        ipr.addr("add", index=idx, address=str(a.address.ip), prefixlen=a.address.network.prefixlen)
        ipr.link("set", index=idx, state="up")

    def _configure_bridge(self, path: str | None, ifname: str, address: IPv4Interface, mtu: int) -> None:
        ipr = self.ipr(path)
        idx = self._index(path, ifname)
        for have in self._addresses(path, idx):
            if have != address:
                ipr.addr("del", index=idx, address=str(have.ip), prefixlen=have.network.prefixlen)
        if address not in self._addresses(path, idx):
            ipr.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=idx, mtu=mtu, state="up")

    def _do_ConfigureBridge(self, a: ConfigureBridge, desired: NodeState) -> None:
        self._configure_bridge(self._sandbox(a.network_id), SANDBOX_BRIDGE, a.address, a.mtu)

    def _do_CreateVxlan(self, a: CreateVxlan, desired: NodeState) -> None:
        path = self._sandbox(a.network_id)
        # Created from the host namespace straight into the sandbox: the
        # device lives in the sandbox, its UDP socket on the underlay.
        try:
            self.ipr(None).link(
                "add", ifname=SANDBOX_VXLAN, kind="vxlan", vxlan_id=a.vni, vxlan_local=str(a.local),
                vxlan_port=VXLAN_PORT, vxlan_learning=0, vxlan_proxy=1, mtu=a.mtu, net_ns_fd=path,
            )
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise DataplaneError(
                    f"network {a.network_id}: cannot create the VXLAN device for VNI {a.vni}: another VXLAN "
                    f"device on UDP port {VXLAN_PORT} of this host already uses that VNI") from e
            raise
        ipr = self.ipr(path)
        idx = self._index(path, SANDBOX_VXLAN)
        ipr.link("set", index=idx, ifalias=self.naming.network_tag(a.network_id))
        ipr.link("set", index=idx, master=self._index(path, SANDBOX_BRIDGE), state="up")

    def _do_ConfigureVxlan(self, a: ConfigureVxlan, desired: NodeState) -> None:
        path = self._sandbox(a.network_id)
        self.ipr(path).link("set", index=self._index(path, SANDBOX_VXLAN), mtu=a.mtu,
                            master=self._index(path, SANDBOX_BRIDGE), state="up")

    def _do_RemoveVxlan(self, a: RemoveVxlan, desired: NodeState) -> None:
        path = self._sandbox(a.network_id)
        _quiet(lambda: self.ipr(path).link("del", index=self._index(path, SANDBOX_VXLAN)), errno.ENODEV)

    def _do_RemoveLink(self, a: RemoveLink, desired: NodeState) -> None:
        path = self._sandbox(a.network_id)
        idx = self.ipr(path).link_lookup(ifname=a.ifname)
        if idx:
            _quiet(lambda: self.ipr(path).link("del", index=idx[0]), errno.ENODEV)

    # peer entries

    def _vxlan(self, network_id: str) -> tuple[IPRoute, int]:
        path = self._sandbox(network_id)
        return self.ipr(path), self._index(path, SANDBOX_VXLAN)

    def _do_AddFdb(self, a: AddFdb, desired: NodeState) -> None:
        ipr, vx = self._vxlan(a.network_id)
        ipr.fdb("add", ifindex=vx, lladdr=a.mac, dst=str(a.node))

    def _do_DelFdb(self, a: DelFdb, desired: NodeState) -> None:
        ipr, vx = self._vxlan(a.network_id)
        _quiet(lambda: ipr.fdb("del", ifindex=vx, lladdr=a.mac, dst=str(a.node)), errno.ENOENT)

    def _do_SetNeigh(self, a: SetNeigh, desired: NodeState) -> None:
        ipr, vx = self._vxlan(a.network_id)
        ipr.neigh("replace", ifindex=vx, dst=str(a.ip), lladdr=a.mac, state=NUD_PERMANENT)

    def _do_DelNeigh(self, a: DelNeigh, desired: NodeState) -> None:
        ipr, vx = self._vxlan(a.network_id)
        _quiet(lambda: ipr.neigh("del", ifindex=vx, dst=str(a.ip), lladdr=a.mac), errno.ENOENT)

    # endpoints

    def _veth_into(self, here: str | None, name: str, alias: str, netns_path: str, ifname: str, mtu: int,
                   mac: str | None, master: str) -> int:
        """Create veth `name` in `here` with its peer `ifname` in the
        container namespace, tag it, enslave it to master; the index of
        the local end. Deleted again if any step fails."""
        if not os.path.exists(netns_path):
            raise NetnsGone(f"container network namespace {netns_path} does not exist")
        ipr = self.ipr(here)
        peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": netns_path, "mtu": mtu}
        if mac:
            peer["address"] = mac
        try:
            ipr.link("add", ifname=name, kind="veth", mtu=mtu, peer=peer)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                inside = self.ipr(netns_path).link_lookup(ifname=ifname)
                what = f"{netns_path} already has an interface named {ifname}" if inside else \
                    f"interface {name} already exists"
                raise DataplaneError(f"cannot attach {ifname} to {netns_path}: {what}") from e
            raise
        idx = self._index(here, name)
        try:
            ipr.link("set", index=idx, ifalias=alias)
            ipr.link("set", index=idx, master=self._index(here, master))
            return idx
        except BaseException:
            _quiet(lambda: ipr.link("del", index=idx), errno.ENODEV)
            raise

    def _do_AttachEndpoint(self, a: AttachEndpoint, desired: NodeState) -> None:
        ep = a.endpoint
        path = self._sandbox(ep.network_id)
        idx = self._veth_into(path, self.naming.endpoint_if(ep.id), self.naming.endpoint_tag(ep.id, ep.netns),
                              ep.netns, ep.ifname, a.mtu, ep.mac, SANDBOX_BRIDGE)
        try:
            c = self.ipr(ep.netns)
            cidx = self._index(ep.netns, ep.ifname)
            c.addr("add", index=cidx, address=str(ep.address.ip), prefixlen=ep.address.network.prefixlen)
            c.link("set", index=cidx, state="up")
            self._pin(path, idx, ep.mac)
            self.ipr(path).link("set", index=idx, state="up")
            self._coming_up += [(path, self.naming.endpoint_if(ep.id)), (ep.netns, ep.ifname)]
        except BaseException:
            _quiet(lambda: self.ipr(path).link("del", index=idx), errno.ENODEV)
            raise

    def _pin(self, path: str, port: int, mac: str) -> None:
        # Static (not local) bridge entry: the bridge may have learnt this
        # MAC behind the VXLAN port while the endpoint ran on another node,
        # and would keep sending its frames there (and dropping those that
        # come from there) until the endpoint spoke first.
        self.ipr(path).neigh("replace", family=AF_BRIDGE, ifindex=port, lladdr=mac, state=NUD_NOARP,
                             flags=NTF_MASTER)

    def _do_ConfigureEndpoint(self, a: ConfigureEndpoint, desired: NodeState) -> None:
        ep = a.endpoint
        path = self._sandbox(ep.network_id)
        port = self._index(path, self.naming.endpoint_if(ep.id))
        self.ipr(path).link("set", index=port, mtu=a.mtu, master=self._index(path, SANDBOX_BRIDGE), state="up")
        self._pin(path, port, ep.mac)
        self.ipr(ep.netns).link("set", index=self._index(ep.netns, ep.ifname), mtu=a.mtu, state="up")
        self._coming_up += [(path, self.naming.endpoint_if(ep.id)), (ep.netns, ep.ifname)]

    def _do_DetachEndpoint(self, a: DetachEndpoint, desired: NodeState) -> None:
        path = self._sandbox(a.network_id)
        idx = self.ipr(path).link_lookup(ifname=self.naming.endpoint_if(a.endpoint_id))
        if idx:
            _quiet(lambda: self.ipr(path).link("del", index=idx[0]), errno.ENODEV)

    # egress

    def _do_CreateEgressBridge(self, a: CreateEgressBridge, desired: NodeState) -> None:
        ipr = self.ipr(None)
        name = self.naming.egress_bridge
        ipr.link("add", ifname=name, kind="bridge", mtu=a.mtu, br_stp_state=0)
        idx = self._index(None, name)
        ipr.link("set", index=idx, ifalias=self.naming.egress_bridge_tag)
        ipr.addr("add", index=idx, address=str(a.address.ip), prefixlen=a.address.network.prefixlen)
        ipr.link("set", index=idx, state="up")

    def _do_ConfigureEgressBridge(self, a: ConfigureEgressBridge, desired: NodeState) -> None:
        self._configure_bridge(None, self.naming.egress_bridge, a.address, a.mtu)

    def _do_RemoveEgressBridge(self, a: RemoveEgressBridge, desired: NodeState) -> None:
        idx = self.ipr(None).link_lookup(ifname=self.naming.egress_bridge)
        if idx:
            _quiet(lambda: self.ipr(None).link("del", index=idx[0]), errno.ENODEV)

    def _do_EnableForwarding(self, a: EnableForwarding, desired: NodeState) -> None:
        with self.in_host():
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write("1")

    def _nft(self, script: str) -> None:
        # In this thread, in the host namespace, through libnftables: no
        # fork of the daemon's process per write (nor per observation).
        try:
            with self.in_host():
                nftlib.run(script)
        except nftlib.NftError as e:
            raise DataplaneError(f"nft table {self.naming.nft_table}: {e}") from None
        self.probe.nft_update()

    def _nft_table(self) -> str | None:
        """The node's nftables table as `nft list` prints it; None when there is none."""
        try:
            with self.in_host():
                return nftlib.run(f"list table ip {self.naming.nft_table}")
        except nftlib.NftError:
            return None

    def _do_WriteNftTable(self, a: WriteNftTable, desired: NodeState) -> None:
        self._nft(nft.render_replace(self.naming.nft_table, a.body))

    def _do_DeleteNftTable(self, a: DeleteNftTable, desired: NodeState) -> None:
        self._nft(nft.render_delete(self.naming.nft_table))

    def _do_AttachEgress(self, a: AttachEgress, desired: NodeState) -> None:
        host_if = self.naming.egress_host_if(a.netns)
        idx = self._veth_into(None, host_if, self.naming.egress_tag(a.netns), a.netns, a.ifname, a.mtu, None,
                              self.naming.egress_bridge)
        ipr = self.ipr(None)
        try:
            # Isolated ports reach the bridge (the gateway) but not each
            # other: containers of different overlay networks stay apart.
            ipr.brport("set", index=idx, isolated=1)
            c = self.ipr(a.netns)
            cidx = self._index(a.netns, a.ifname)
            c.addr("add", index=cidx, address=str(a.address.ip), prefixlen=a.address.network.prefixlen)
            c.link("set", index=cidx, state="up")
            c.route("replace", dst="0.0.0.0/0", gateway=str(a.gateway), oif=cidx)
            ipr.link("set", index=idx, state="up")
            self._coming_up += [(None, host_if), (a.netns, a.ifname)]
        except BaseException:
            _quiet(lambda: ipr.link("del", index=idx), errno.ENODEV)
            raise

    def _do_DetachEgress(self, a: DetachEgress, desired: NodeState) -> None:
        idx = self.ipr(None).link_lookup(ifname=a.host_ifname)
        if idx:
            _quiet(lambda: self.ipr(None).link("del", index=idx[0]), errno.ENODEV)

    # -- teardown ----------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Remove everything this prefix owns on the node; what was removed."""
        removed: list[str] = []
        for name in self.sandbox_names():
            self._remove_sandbox(name)
            removed.append(f"netns {name}")
        ipr = self.ipr(None)
        tag = self.naming.tag
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            alias = link.get_attr("IFLA_IFALIAS") or ""
            ours = alias.startswith(tag) or name == self.naming.egress_bridge or (
                _kind(link) == "veth" and self.naming.is_egress_host_if(name))
            if ours:
                _quiet(lambda: ipr.link("del", index=link["index"]), errno.ENODEV)
                removed.append(f"link {name}")
        if self._nft_table() is not None:
            self._nft(nft.render_delete(self.naming.nft_table))
            removed.append(f"nft table ip {self.naming.nft_table}")
        return removed
