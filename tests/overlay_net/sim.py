"""A kernel on paper, for the planner's unit tests: applies planned actions
to an ObservedState the way netlink.py does to the kernel, and refuses what
the kernel would refuse (a device in a namespace that does not exist, an
interface name taken in a container, an FDB entry that exists), so the tests
check the plan's order as well as its result."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

from overlay_net import plan as P
from overlay_net.model import (
    VXLAN_PORT,
    BridgeState,
    EgressAttachmentState,
    EndpointState,
    NodeState,
    ObservedState,
    SandboxState,
    VxlanState,
)
from overlay_net.names import Naming
from overlay_net.nft import fingerprint


class Refused(AssertionError):
    """The kernel would have refused this action in this state."""


def _sb(obs: ObservedState, net: str) -> SandboxState:
    s = obs.sandbox(net)
    if s is None:
        raise Refused(f"no sandbox for {net}")
    return s


def _put(obs: ObservedState, s: SandboxState) -> ObservedState:
    rest = tuple(x for x in obs.sandboxes if x.network_id != s.network_id)
    return replace(obs, sandboxes=tuple(sorted(rest + (s,), key=lambda x: x.network_id)))


def _names_in(obs: ObservedState, netns: str) -> set[str]:
    names = {e.ifname for s in obs.sandboxes for e in s.endpoints if e.netns == netns and e.ifname}
    names |= {a.ifname for a in obs.egress if a.netns == netns and a.ifname}
    return names


def step(obs: ObservedState, a: P.Action, desired: NodeState) -> ObservedState:
    naming = Naming(desired.prefix)
    if isinstance(a, P.CreateSandbox):
        if obs.sandbox(a.network_id) is not None:
            raise Refused(f"sandbox {a.network_id} exists")
        return _put(obs, SandboxState(a.network_id, None, None, frozenset(), frozenset()))
    if isinstance(a, P.RemoveSandbox):
        _sb(obs, a.network_id)
        return replace(obs, sandboxes=tuple(s for s in obs.sandboxes if s.network_id != a.network_id))
    if isinstance(a, P.CreateBridge):
        s = _sb(obs, a.network_id)
        if s.bridge is not None:
            raise Refused("bridge exists")
        return _put(obs, replace(s, bridge=BridgeState((a.address,), a.mtu, True)))
    if isinstance(a, P.ConfigureBridge):
        s = _sb(obs, a.network_id)
        if s.bridge is None:
            raise Refused("no bridge")
        return _put(obs, replace(s, bridge=BridgeState((a.address,), a.mtu, True)))
    if isinstance(a, P.CreateVxlan):
        s = _sb(obs, a.network_id)
        if s.vxlan is not None or s.bridge is None:
            raise Refused("vxlan exists or no bridge to enslave it to")
        for o in obs.sandboxes:
            if o.vxlan is not None and o.vxlan.vni == a.vni:
                raise Refused(f"VNI {a.vni} in use")
        vx = VxlanState(a.vni, a.local, VXLAN_PORT, False, True, a.mtu, True, True)
        return _put(obs, replace(s, vxlan=vx, fdb=frozenset(), neigh=frozenset()))
    if isinstance(a, P.ConfigureVxlan):
        s = _sb(obs, a.network_id)
        if s.vxlan is None or s.bridge is None:
            raise Refused("no vxlan")
        return _put(obs, replace(s, vxlan=replace(s.vxlan, mtu=a.mtu, up=True, enslaved=True)))
    if isinstance(a, P.RemoveVxlan):
        s = _sb(obs, a.network_id)
        if s.vxlan is None:
            raise Refused("no vxlan")
        return _put(obs, replace(s, vxlan=None, fdb=frozenset(), neigh=frozenset()))
    if isinstance(a, P.RemoveLink):
        s = _sb(obs, a.network_id)
        return _put(obs, replace(s, stale_links=tuple(x for x in s.stale_links if x != a.ifname)))
    if isinstance(a, (P.AddFdb, P.DelFdb, P.SetNeigh, P.DelNeigh)):
        s = _sb(obs, a.network_id)
        if s.vxlan is None:
            raise Refused("no vxlan for entries")
        if isinstance(a, P.AddFdb):
            if any(m == a.mac for m, _ in s.fdb):
                raise Refused(f"fdb entry for {a.mac} exists")
            return _put(obs, replace(s, fdb=s.fdb | {(a.mac, a.node)}))
        if isinstance(a, P.DelFdb):
            return _put(obs, replace(s, fdb=s.fdb - {(a.mac, a.node)}))
        if isinstance(a, P.SetNeigh):
            return _put(obs, replace(s, neigh=frozenset({x for x in s.neigh if x[0] != a.ip} | {(a.ip, a.mac)})))
        return _put(obs, replace(s, neigh=s.neigh - {(a.ip, a.mac)}))
    if isinstance(a, P.AttachEndpoint):
        ep = a.endpoint
        s = _sb(obs, ep.network_id)
        if s.bridge is None:
            raise Refused("no bridge to attach to")
        if ep.ifname in _names_in(obs, ep.netns):
            raise Refused(f"{ep.netns} already has {ep.ifname}")
        if any(e.endpoint_id == ep.id for e in s.endpoints):
            raise Refused(f"veth of {ep.id} exists")
        st = EndpointState(ep.id, ep.network_id, ep.netns, ep.ifname, ep.address, ep.mac, a.mtu, True, a.mtu, True)
        return _put(obs, replace(s, endpoints=tuple(sorted(s.endpoints + (st,), key=lambda e: e.endpoint_id))))
    if isinstance(a, P.ConfigureEndpoint):
        s = _sb(obs, a.endpoint.network_id)
        eps = tuple(replace(e, mtu=a.mtu, sandbox_mtu=a.mtu, up=True, enslaved=True, pinned=True)
                    if e.endpoint_id == a.endpoint.id else e for e in s.endpoints)
        return _put(obs, replace(s, endpoints=eps))
    if isinstance(a, P.DetachEndpoint):
        s = _sb(obs, a.network_id)
        kept = tuple(e for e in s.endpoints if not (e.endpoint_id == a.endpoint_id and e.netns == a.netns))
        if len(kept) == len(s.endpoints):
            raise Refused(f"no endpoint {a.endpoint_id} to detach")
        # The kernel deletes by veth name, i.e. every copy with that id.
        kept = tuple(e for e in s.endpoints if e.endpoint_id != a.endpoint_id)
        return _put(obs, replace(s, endpoints=kept))
    if isinstance(a, P.CreateEgressBridge):
        if obs.egress_bridge is not None:
            raise Refused("egress bridge exists")
        return replace(obs, egress_bridge=BridgeState((a.address,), a.mtu, True))
    if isinstance(a, P.ConfigureEgressBridge):
        return replace(obs, egress_bridge=BridgeState((a.address,), a.mtu, True))
    if isinstance(a, P.RemoveEgressBridge):
        return replace(obs, egress_bridge=None,
                       egress=tuple(dataclasses.replace(x, enslaved=False) for x in obs.egress))
    if isinstance(a, P.EnableForwarding):
        return replace(obs, forwarding=True)
    if isinstance(a, P.WriteNftTable):
        return replace(obs, nft_fingerprint=fingerprint(a.body))
    if isinstance(a, P.DeleteNftTable):
        return replace(obs, nft_fingerprint=None)
    if isinstance(a, P.AttachEgress):
        if obs.egress_bridge is None:
            raise Refused("no egress bridge")
        if a.ifname in _names_in(obs, a.netns):
            raise Refused(f"{a.netns} already has {a.ifname}")
        host_if = naming.egress_host_if(a.netns)
        if any(x.host_ifname == host_if for x in obs.egress):
            raise Refused(f"{host_if} exists")
        if any(x.address is not None and x.address.ip == a.address.ip for x in obs.egress):
            raise Refused(f"egress address {a.address} given twice")
        st = EgressAttachmentState(a.netns, host_if, a.ifname, a.address, a.gateway, a.mtu, True, True, True)
        return replace(obs, egress=tuple(sorted(obs.egress + (st,), key=lambda x: x.host_ifname)))
    if isinstance(a, P.DetachEgress):
        kept = tuple(x for x in obs.egress if x.host_ifname != a.host_ifname)
        if len(kept) == len(obs.egress):
            raise Refused(f"no egress veth {a.host_ifname}")
        return replace(obs, egress=kept)
    raise AssertionError(f"unknown action {a}")


def run(obs: ObservedState, actions: list[P.Action], desired: NodeState) -> ObservedState:
    for a in actions:
        obs = step(obs, a, desired)
    return obs


def converge(desired: NodeState, obs: ObservedState | None = None) -> tuple[ObservedState, list[P.Action]]:
    """Plan from obs (default: an empty node) and apply; (result, actions)."""
    obs = obs if obs is not None else ObservedState(underlay_mtu=desired.underlay_mtu)
    actions = P.plan(desired, obs)
    return run(obs, actions, desired), actions
