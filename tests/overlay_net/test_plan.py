"""The pure reconciler: which actions, in which order, and that applying
them converges (planning again yields nothing). The paper kernel in sim.py
refuses actions in an order the real kernel would refuse."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv4Interface

import pytest

from overlay_net import plan as P
from overlay_net.model import Egress, Endpoint, Network, NodeState, ObservedState, Peer, SandboxState
from overlay_net.names import Naming
from overlay_net.plan import plan
from tests.overlay_net import sim

ME = "192.168.5.1"
B = "192.168.5.2"
C = "192.168.5.3"
C1 = "/run/netns/c1"
C2 = "/run/netns/c2"

N1 = Network("n1", 100, "10.1.0.0/24")
N2 = Network("n2", 200, "10.2.0.0/24")
NI = Network("ni", 300, "10.3.0.0/24", internal=True)


def node(networks=(N1,), endpoints=(), peers=(), **kw) -> NodeState:  # type: ignore[no-untyped-def]
    kw.setdefault("underlay_mtu", 1500)
    return NodeState("orch-", ME, tuple(networks), tuple(endpoints), tuple(peers), **kw)


def ep(id: str = "e1", net: str = "n1", addr: str = "10.1.0.2/24", netns: str = C1, ifname: str = "eth0") -> Endpoint:
    return Endpoint(id, net, netns, ifname, addr)  # type: ignore[arg-type]


def kinds(actions: list[P.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def converged(desired: NodeState) -> ObservedState:
    obs, _ = sim.converge(desired)
    assert plan(desired, obs) == []
    return obs


def test_empty() -> None:
    assert plan(node(networks=()), ObservedState()) == []
    # A network with no local endpoint gets no sandbox, whatever its peers.
    assert plan(node(peers=[Peer("n1", "10.1.0.9", B)]), ObservedState()) == []


def test_new_network_with_endpoint_and_peer() -> None:
    desired = node(endpoints=[ep()], peers=[Peer("n1", "10.1.0.3", B)])
    actions = plan(desired, ObservedState())
    assert kinds(actions) == [
        "CreateSandbox", "CreateBridge", "CreateVxlan", "AddFdb", "SetNeigh",
        "CreateEgressBridge", "EnableForwarding", "WriteNftTable", "AttachEndpoint", "AttachEgress",
    ]
    assert actions[1] == P.CreateBridge("n1", IPv4Interface("10.1.0.1/24"), 1450)
    assert actions[2] == P.CreateVxlan("n1", 100, IPv4Address(ME), 1450)
    assert actions[3] == P.AddFdb("n1", "02:42:0a:01:00:03", IPv4Address(B))
    assert actions[4] == P.SetNeigh("n1", IPv4Address("10.1.0.3"), "02:42:0a:01:00:03")
    assert actions[-1] == P.AttachEgress(C1, "eth1", IPv4Interface("172.18.0.2/16"), IPv4Address("172.18.0.1"), 1500)
    assert not P.disruptive(actions)
    obs = sim.run(ObservedState(), actions, desired)
    assert plan(desired, obs) == []


def test_idempotent_on_converged_state() -> None:
    desired = node(networks=[N1, N2, NI],
                   endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", ifname="eth1"),
                              ep("e3", "ni", "10.3.0.5/24", netns=C2)],
                   peers=[Peer("n1", "10.1.0.3", B), Peer("n2", "10.2.0.9", C), Peer("ni", "10.3.0.6", B)])
    obs = converged(desired)
    assert plan(desired, obs) == []
    assert plan(desired, obs, only_netns=C1) == []


def test_mtu_lowered_to_the_underlay() -> None:
    desired = node(endpoints=[ep()], underlay_mtu=1400)
    actions = plan(desired, ObservedState())
    assert P.CreateVxlan("n1", 100, IPv4Address(ME), 1350) in actions
    assert P.AttachEndpoint(desired.endpoints[0], 1350) in actions


def test_remove_network() -> None:
    desired = node(networks=[N1, N2], endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", netns=C2)])
    obs = converged(desired)
    after = node(networks=[N1], endpoints=[ep()])
    # The sandbox goes as a whole (its endpoints with it); egress of C2 too.
    assert kinds(plan(after, obs)) == ["DetachEgress", "RemoveSandbox"]
    obs = sim.run(obs, plan(after, obs), after)
    assert plan(after, obs) == []


def test_sandbox_without_endpoints_is_removed() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    idle = node(peers=[Peer("n1", "10.1.0.3", B)])  # still desired, no local endpoint
    actions = plan(idle, obs)
    assert kinds(actions) == ["DetachEgress", "RemoveSandbox", "DeleteNftTable", "RemoveEgressBridge"]
    assert plan(idle, sim.run(obs, actions, idle)) == []


def test_endpoint_changes() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    moved_ip = node(endpoints=[ep(addr="10.1.0.7/24")])
    assert kinds(plan(moved_ip, obs)) == ["DetachEndpoint", "AttachEndpoint"]
    renamed = node(endpoints=[ep(ifname="eth5")])
    # eth5 frees eth0 for nothing; egress stays eth1? No: the first free ethN is now eth0.
    actions = plan(renamed, obs)
    assert kinds(actions) == ["DetachEgress", "DetachEndpoint", "AttachEndpoint", "AttachEgress"]
    assert actions[-1].ifname == "eth0"  # type: ignore[attr-defined]
    assert plan(renamed, sim.run(obs, actions, renamed)) == []
    # MTU only: fixed in place, nothing disruptive.
    smaller = node(networks=[dataclasses.replace(N1, mtu=1400)], endpoints=[ep()])
    actions = plan(smaller, obs)
    assert kinds(actions) == ["ConfigureBridge", "ConfigureVxlan", "ConfigureEndpoint"]
    assert not P.disruptive(actions)


def test_endpoint_goes_down_is_brought_up() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    s = obs.sandboxes[0]
    broken = dataclasses.replace(obs, sandboxes=(dataclasses.replace(
        s, endpoints=(dataclasses.replace(s.endpoints[0], up=False),)),))
    assert kinds(plan(desired, broken)) == ["ConfigureEndpoint"]
    unpinned = dataclasses.replace(obs, sandboxes=(dataclasses.replace(
        s, endpoints=(dataclasses.replace(s.endpoints[0], pinned=False),)),))
    assert kinds(plan(desired, unpinned)) == ["ConfigureEndpoint"]
    assert plan(desired, sim.run(unpinned, plan(desired, unpinned), desired)) == []


def test_container_side_lost_is_reattached() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    s = obs.sandboxes[0]
    lost = dataclasses.replace(obs, sandboxes=(dataclasses.replace(
        s, endpoints=(dataclasses.replace(s.endpoints[0], ifname=None, address=None, mac=None, mtu=None),)),))
    assert kinds(plan(desired, lost)) == ["DetachEndpoint", "AttachEndpoint"]


def test_endpoint_moves_between_hosts() -> None:
    """e2 runs on this node and on B, then moves from this node to C."""
    e1, e2 = ep(), ep("e2", addr="10.1.0.3/24", netns=C2)
    here = node(endpoints=[e1, e2], peers=[Peer("n1", "10.1.0.4", B)])
    obs = converged(here)
    after = node(endpoints=[e1], peers=[Peer("n1", "10.1.0.4", B), Peer("n1", "10.1.0.3", C)])
    actions = plan(after, obs)
    assert actions == [
        P.DetachEgress(C2, Naming("orch-").egress_host_if(C2)),
        P.DetachEndpoint("n1", "e2", C2),
        P.AddFdb("n1", "02:42:0a:01:00:03", IPv4Address(C)),
        P.SetNeigh("n1", IPv4Address("10.1.0.3"), "02:42:0a:01:00:03"),
    ]
    assert plan(after, sim.run(obs, actions, after)) == []

    # On a third node that saw e2 as a peer on this node: only the FDB
    # entry changes, removed before it is added again.
    third = NodeState("orch-", B, (N1,), (ep("e4", addr="10.1.0.4/24"),),
                      (Peer("n1", "10.1.0.2", ME), Peer("n1", "10.1.0.3", ME)), underlay_mtu=1500)
    obs3 = converged(third)
    third_after = dataclasses.replace(third, peers=(Peer("n1", "10.1.0.2", ME), Peer("n1", "10.1.0.3", C)))
    assert plan(third_after, obs3) == [
        P.DelFdb("n1", "02:42:0a:01:00:03", IPv4Address(ME)),
        P.AddFdb("n1", "02:42:0a:01:00:03", IPv4Address(C)),
    ]


def test_peer_mac_change_and_removal() -> None:
    desired = node(endpoints=[ep()], peers=[Peer("n1", "10.1.0.3", B), Peer("n1", "10.1.0.4", B)])
    obs = converged(desired)
    changed = node(endpoints=[ep()], peers=[Peer("n1", "10.1.0.3", B, mac="02:00:00:00:00:33")])
    actions = plan(changed, obs)
    assert actions == [
        P.DelFdb("n1", "02:42:0a:01:00:03", IPv4Address(B)),
        P.DelFdb("n1", "02:42:0a:01:00:04", IPv4Address(B)),
        P.DelNeigh("n1", IPv4Address("10.1.0.4"), "02:42:0a:01:00:04"),
        P.AddFdb("n1", "02:00:00:00:00:33", IPv4Address(B)),
        P.SetNeigh("n1", IPv4Address("10.1.0.3"), "02:00:00:00:00:33"),
    ]
    assert plan(changed, sim.run(obs, actions, changed)) == []


def test_flood_entry_is_stale() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    s = obs.sandboxes[0]
    flooded = dataclasses.replace(obs, sandboxes=(dataclasses.replace(
        s, fdb=frozenset({("00:00:00:00:00:00", IPv4Address(B))})),))
    assert plan(desired, flooded) == [P.DelFdb("n1", "00:00:00:00:00:00", IPv4Address(B))]


def test_vni_change_recreates_the_vxlan_and_its_entries() -> None:
    desired = node(endpoints=[ep()], peers=[Peer("n1", "10.1.0.3", B)])
    obs = converged(desired)
    renumbered = node(networks=[dataclasses.replace(N1, vni=101)], endpoints=[ep()], peers=[Peer("n1", "10.1.0.3", B)])
    assert kinds(plan(renumbered, obs)) == ["RemoveVxlan", "CreateVxlan", "AddFdb", "SetNeigh"]
    # Two networks swapping VNIs: both removed before either is made.
    both = node(networks=[N1, N2], endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", netns=C2)])
    obs = converged(both)
    swapped = node(networks=[dataclasses.replace(N1, vni=200), dataclasses.replace(N2, vni=100)],
                   endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", netns=C2)])
    actions = plan(swapped, obs)
    assert kinds(actions) == ["RemoveVxlan", "RemoveVxlan", "CreateVxlan", "CreateVxlan"]
    assert plan(swapped, sim.run(obs, actions, swapped)) == []


def test_wrong_vxlan_flags_recreate() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    s = obs.sandboxes[0]
    assert s.vxlan is not None
    learning = dataclasses.replace(obs, sandboxes=(dataclasses.replace(
        s, vxlan=dataclasses.replace(s.vxlan, learning=True)),))
    assert kinds(plan(desired, learning)) == ["RemoveVxlan", "CreateVxlan"]


def test_repairs_half_made_sandbox() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    s = obs.sandboxes[0]
    half = dataclasses.replace(obs, sandboxes=(dataclasses.replace(
        s, vxlan=None, endpoints=(), stale_links=("vea1b2c3d4e5",)),))
    actions = plan(desired, half)
    assert kinds(actions) == ["RemoveLink", "CreateVxlan", "AttachEndpoint"]
    assert plan(desired, sim.run(half, actions, desired)) == []
    wrong_addr = dataclasses.replace(obs, sandboxes=(dataclasses.replace(
        s, bridge=dataclasses.replace(s.bridge, addresses=())),))  # type: ignore[arg-type]
    assert kinds(plan(desired, wrong_addr)) == ["ConfigureBridge"]


def test_unusable_sandbox_is_made_again() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    broken = dataclasses.replace(obs, sandboxes=(
        SandboxState("n1", None, None, frozenset(), frozenset(), usable=False),
        SandboxState("old", None, None, frozenset(), frozenset(), usable=False)))
    actions = plan(desired, broken)
    assert kinds(actions) == ["RemoveSandbox", "RemoveSandbox", "CreateSandbox", "CreateBridge", "CreateVxlan",
                              "AttachEndpoint"]
    assert {a.network_id for a in actions if isinstance(a, P.RemoveSandbox)} == {"n1", "old"}


def test_duplicate_observed_endpoint_is_detached() -> None:
    desired = node(networks=[N1, N2], endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", netns=C2)])
    obs = converged(desired)
    s1, s2 = obs.sandboxes
    dup = dataclasses.replace(s2, endpoints=s2.endpoints + (dataclasses.replace(s1.endpoints[0], network_id="n2"),))
    obs = dataclasses.replace(obs, sandboxes=(s1, dup))
    assert plan(desired, obs) == [P.DetachEndpoint("n2", "e1", C1)]


def test_internal_network_gets_no_egress() -> None:
    desired = node(networks=[NI], endpoints=[ep("e1", "ni", "10.3.0.2/24")])
    actions = plan(desired, ObservedState())
    assert kinds(actions) == ["CreateSandbox", "CreateBridge", "CreateVxlan", "AttachEndpoint"]
    # A container on an internal and a non-internal network gets egress.
    mixed = node(networks=[NI, N1], endpoints=[ep("e1", "ni", "10.3.0.2/24"), ep("e2", "n1", ifname="eth1")])
    eg = [a for a in plan(mixed, ObservedState()) if isinstance(a, P.AttachEgress)]
    assert [(a.netns, a.ifname) for a in eg] == [(C1, "eth2")]


def test_network_becoming_internal_loses_egress() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    internal = node(networks=[dataclasses.replace(N1, internal=True)], endpoints=[ep()])
    actions = plan(internal, obs)
    assert kinds(actions) == ["DetachEgress", "DeleteNftTable", "RemoveEgressBridge"]
    assert plan(internal, sim.run(obs, actions, internal)) == []


def test_egress_name_moves_out_of_the_way() -> None:
    """C1 has eth0 (n1) + egress eth1; joining n2 as eth1 moves egress to eth2."""
    desired = node(networks=[N1, N2], endpoints=[ep()])
    obs = converged(desired)
    joined = node(networks=[N1, N2], endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", ifname="eth1")])
    actions = plan(joined, obs)
    assert kinds(actions) == ["DetachEgress", "CreateSandbox", "CreateBridge", "CreateVxlan", "AttachEndpoint",
                              "AttachEgress"]
    assert actions[-1].ifname == "eth2"  # type: ignore[attr-defined]
    assert plan(joined, sim.run(obs, actions, joined)) == []


def test_egress_addresses_are_kept_and_reused_lowest_first() -> None:
    c3 = "/run/netns/c3"
    desired = node(endpoints=[ep(), ep("e2", addr="10.1.0.3/24", netns=C2), ep("e3", addr="10.1.0.4/24", netns=c3)],
                   egress=Egress("172.30.0.0/24"))
    obs = converged(desired)
    addrs = {a.netns: str(a.address) for a in obs.egress}
    assert addrs == {C1: "172.30.0.2/24", C2: "172.30.0.3/24", c3: "172.30.0.4/24"}
    # C1 leaves, C4 arrives: C2 and C3 keep theirs, C4 gets the freed .2.
    c4 = "/run/netns/c4"
    later = node(endpoints=[ep("e2", addr="10.1.0.3/24", netns=C2), ep("e3", addr="10.1.0.4/24", netns=c3),
                            ep("e4", addr="10.1.0.5/24", netns=c4)], egress=Egress("172.30.0.0/24"))
    actions = plan(later, obs)
    assert kinds(actions) == ["DetachEgress", "DetachEndpoint", "AttachEndpoint", "AttachEgress"]
    assert actions[-1] == P.AttachEgress(c4, "eth1", IPv4Interface("172.30.0.2/24"), IPv4Address("172.30.0.1"), 1500)
    # A new egress subnet renumbers everyone.
    moved = dataclasses.replace(later, egress=Egress("172.31.0.0/24"))
    obs = sim.run(obs, actions, later)
    actions = plan(moved, obs)
    assert kinds(actions).count("DetachEgress") == 3 and kinds(actions).count("AttachEgress") == 3
    assert "ConfigureEgressBridge" in kinds(actions) and "WriteNftTable" in kinds(actions)
    assert plan(moved, sim.run(obs, actions, moved)) == []


def test_forwarding_and_nft_drift_are_repaired() -> None:
    desired = node(endpoints=[ep()])
    obs = converged(desired)
    assert kinds(plan(desired, dataclasses.replace(obs, forwarding=False))) == ["EnableForwarding"]
    assert kinds(plan(desired, dataclasses.replace(obs, nft_fingerprint=""))) == ["WriteNftTable"]
    assert kinds(plan(desired, dataclasses.replace(obs, nft_fingerprint=None))) == ["WriteNftTable"]


def test_only_netns_restricts_the_plan() -> None:
    desired = node(networks=[N1, N2], endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", netns=C2)],
                   peers=[Peer("n2", "10.2.0.9", B)])
    actions = plan(desired, ObservedState(), only_netns=C2)
    assert {a.network_id for a in actions if hasattr(a, "network_id")} == {"n2"}
    assert [a.netns for a in actions if isinstance(a, P.AttachEgress)] == [C2]
    # Stale things elsewhere are left alone.
    stale = converged(node(networks=[N1, N2], endpoints=[ep("old", "n1", "10.1.0.9/24", netns="/run/netns/x")]))
    actions = plan(desired, stale, only_netns=C2)
    assert not any(isinstance(a, (P.RemoveSandbox, P.DetachEndpoint)) for a in actions)


def test_adoption_plans_nothing_disruptive() -> None:
    """A restarted daemon plans against what its predecessor made."""
    desired = node(networks=[N1, NI], endpoints=[ep(), ep("e3", "ni", "10.3.0.2/24", netns=C2)],
                   peers=[Peer("n1", "10.1.0.3", B)])
    obs = converged(desired)
    assert plan(desired, obs) == []
    # ...also when the new daemon's table lists the peers in another order.
    shuffled = dataclasses.replace(desired, peers=tuple(reversed(desired.peers)),
                                   endpoints=tuple(reversed(desired.endpoints)))
    assert plan(shuffled, obs) == []


# -- random walks: from any state the planner reaches any other in one plan ------------


def random_state(rng: random.Random) -> NodeState:
    nets = []
    for i, (vni, internal) in enumerate(rng.sample([(10, False), (11, True), (12, False), (13, False)], rng.randint(0, 4))):
        nets.append(Network(f"n{vni}", rng.choice([vni, vni + 100]), f"10.{vni}.0.0/24", internal=internal,
                            mtu=rng.choice([1450, 1400])))
    endpoints: list[Endpoint] = []
    peers: list[Peer] = []
    containers = [f"/run/netns/c{i}" for i in range(4)]
    for n in nets:
        hosts = rng.sample(range(2, 40), 8)
        for c in containers:
            if rng.random() < 0.5:
                used = {e.ifname for e in endpoints if e.netns == c}
                ifname = rng.choice([x for x in ("eth0", "eth1", "eth2", "eth3", "eth4") if x not in used])
                endpoints.append(Endpoint(f"{n.id}-{c[-2:]}-{rng.randint(0, 1)}", n.id, c, ifname,
                                          f"10.{n.vni % 100}.0.{hosts.pop()}/24"))  # type: ignore[arg-type]
        for _ in range(rng.randint(0, 3)):
            mac = rng.choice(["", "02:00:00:00:00:01", "02:00:00:00:00:02"])
            if mac and any(p.mac == mac and p.network_id == n.id for p in peers):
                mac = ""
            peers.append(Peer(n.id, f"10.{n.vni % 100}.0.{hosts.pop()}", rng.choice([B, C]), mac=mac))  # type: ignore[arg-type]
    return node(networks=nets, endpoints=endpoints, peers=peers,
                egress=Egress(rng.choice(["172.18.0.0/16", "172.30.0.0/24"])), underlay_mtu=rng.choice([1500, 1420]))


@pytest.mark.parametrize("seed", range(40))
def test_random_walk_converges(seed: int) -> None:
    rng = random.Random(seed)
    obs = ObservedState()
    for _ in range(6):
        desired = random_state(rng)
        actions = plan(desired, obs)
        obs = sim.run(obs, actions, desired)
        assert plan(desired, obs) == [], f"seed {seed}: not converged"
