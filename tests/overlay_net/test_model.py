"""Validation of the desired node state: every bad input is refused as a
whole, with each problem naming its field."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay_net.model import (
    DEFAULT_MTU,
    Egress,
    Endpoint,
    Network,
    NodeState,
    Peer,
    StateError,
    mac_for_ip,
)

NS = "/run/netns/c1"


def net(id: str = "n1", vni: int = 100, subnet: str = "10.1.0.0/24", **kw: object) -> Network:
    return Network(id, vni, subnet, **kw)  # type: ignore[arg-type]


def ep(id: str = "e1", network: str = "n1", addr: str = "10.1.0.2/24", netns: str = NS, ifname: str = "eth0",
       **kw: object) -> Endpoint:
    return Endpoint(id, network, netns, ifname, addr, **kw)  # type: ignore[arg-type]


def node(**kw: object) -> NodeState:
    kw.setdefault("prefix", "orch-")
    kw.setdefault("underlay_addr", "192.168.5.1")
    return NodeState(**kw)  # type: ignore[arg-type]


def fields(exc: pytest.ExceptionInfo[StateError]) -> list[str]:
    return [p.field for p in exc.value.problems]


# -- single objects ------------------------------------------------------------


def test_network_defaults_and_conversion() -> None:
    n = net()
    assert n.subnet == IPv4Network("10.1.0.0/24")
    assert n.gateway == IPv4Address("10.1.0.1")
    assert n.mtu == DEFAULT_MTU == 1450
    assert n.internal is False


@pytest.mark.parametrize("vni", [0, -1, 1 << 24, True, "5"])
def test_vni_out_of_range(vni: object) -> None:
    with pytest.raises(StateError) as e:
        net(vni=vni)  # type: ignore[arg-type]
    assert fields(e) == ["vni"]
    assert "1..16777215" in str(e.value)


@pytest.mark.parametrize("vni", [1, (1 << 24) - 1])
def test_vni_bounds_accepted(vni: int) -> None:
    assert net(vni=vni).vni == vni


@pytest.mark.parametrize("mtu", [67, 65536, 0, 1450.0])
def test_mtu_out_of_range(mtu: object) -> None:
    with pytest.raises(StateError) as e:
        net(mtu=mtu)
    assert fields(e) == ["mtu"]
    assert "68..65535" in str(e.value)


def test_bad_subnet_and_gateway() -> None:
    with pytest.raises(StateError) as e:
        net(subnet="10.1.0.5/24")
    assert fields(e) == ["subnet"] and "host bits" in str(e.value)
    with pytest.raises(StateError) as e:
        net(subnet="fd00::/64")
    assert "IPv6" in str(e.value)
    with pytest.raises(StateError) as e:
        net(gateway="10.2.0.1")
    assert fields(e) == ["gateway"] and "not a host address of the subnet 10.1.0.0/24" in str(e.value)
    with pytest.raises(StateError) as e:
        net(gateway="10.1.0.255")
    assert fields(e) == ["gateway"]


def test_several_problems_reported_at_once() -> None:
    with pytest.raises(StateError) as e:
        Network("bad id", 0, "nonsense", mtu=10)
    assert sorted(fields(e)) == ["id", "mtu", "subnet", "vni"]


def test_endpoint_mac_derived_docker_style() -> None:
    e = ep(addr="10.1.0.2/24")
    assert e.mac == "02:42:0a:01:00:02" == mac_for_ip(IPv4Address("10.1.0.2"))
    assert e.address == IPv4Interface("10.1.0.2/24")
    assert ep(mac="02:AA:bb:CC:dd:01").mac == "02:aa:bb:cc:dd:01"


@pytest.mark.parametrize("mac, why", [
    ("02:42:0a", "not a MAC"),
    ("zz:42:0a:01:00:02", "not a MAC"),
    ("01:00:5e:00:00:01", "multicast"),
    ("00:00:00:00:00:00", "all-zero"),
])
def test_bad_mac(mac: str, why: str) -> None:
    with pytest.raises(StateError) as e:
        ep(mac=mac)
    assert fields(e) == ["mac"] and why in str(e.value)
    with pytest.raises(StateError) as e:
        Peer("n1", "10.1.0.9", "192.168.5.2", mac=mac)
    assert fields(e) == ["mac"]


def test_endpoint_fields() -> None:
    with pytest.raises(StateError) as e:
        ep(addr="10.1.0.2")
    assert fields(e) == ["address"] and "prefix length" in str(e.value)
    with pytest.raises(StateError) as e:
        ep(ifname="averyveryverylongname")
    assert fields(e) == ["ifname"] and "15" in str(e.value)
    with pytest.raises(StateError) as e:
        ep(ifname="lo")
    assert fields(e) == ["ifname"]
    with pytest.raises(StateError) as e:
        ep(netns="proc/1/ns/net")
    assert fields(e) == ["netns"] and "absolute" in str(e.value)
    with pytest.raises(StateError) as e:
        ep(id="a:b")
    assert fields(e) == ["id"]


def test_peer_fields() -> None:
    p = Peer("n1", "10.1.0.9", "192.168.5.2")
    assert p.mac == "02:42:0a:01:00:09" and p.node == IPv4Address("192.168.5.2")
    with pytest.raises(StateError) as e:
        Peer("n1", "10.1.0.9", "host-b")
    assert fields(e) == ["node"]


def test_egress_fields() -> None:
    assert Egress().subnet == IPv4Network("172.18.0.0/16")
    assert Egress("172.30.0.0/24").gateway == IPv4Interface("172.30.0.1/24")
    with pytest.raises(StateError) as e:
        Egress("172.30.0.0/30")
    assert fields(e) == ["subnet"]


# -- the whole node --------------------------------------------------------------


def test_valid_node_state() -> None:
    s = node(networks=[net(), net("n2", 101, "10.2.0.0/24", internal=True)],
             endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24", ifname="eth1")],
             peers=[Peer("n1", "10.1.0.3", "192.168.5.2")])
    assert isinstance(s.networks, tuple) and isinstance(s.endpoints, tuple)
    assert s.underlay_addr == IPv4Address("192.168.5.1")
    assert [n.id for n in s.local_networks()] == ["n1", "n2"]
    assert s.egress_containers() == (NS,)
    assert s.egress_ifname(NS) == "eth2"


def test_prefix_and_underlay() -> None:
    with pytest.raises(StateError) as e:
        node(prefix="9bad:")
    assert fields(e) == ["prefix"]
    with pytest.raises(StateError) as e:
        node(underlay_addr="fe80::1")
    assert fields(e) == ["underlay_addr"]
    with pytest.raises(StateError) as e:
        node(underlay_mtu=100)
    assert fields(e) == ["underlay_mtu"]


def test_ip_outside_subnet_and_wrong_prefix() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep(addr="10.9.0.2/24")])
    assert fields(e) == ["endpoints[e1].address"] and "outside network 'n1'" in str(e.value)
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep(addr="10.1.0.2/16")])
    assert fields(e) == ["endpoints[e1].address"] and "prefix length /16" in str(e.value)


def test_reserved_addresses() -> None:
    for addr in ("10.1.0.1/24", "10.1.0.0/24", "10.1.0.255/24"):
        with pytest.raises(StateError) as e:
            node(networks=[net()], endpoints=[ep(addr=addr)])
        assert fields(e) == ["endpoints[e1].address"]


def test_duplicate_ip_in_a_network() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep(), ep("e2", netns="/run/netns/c2")])
    assert "endpoints[e2].address" in fields(e) and "duplicate IP 10.1.0.2" in str(e.value)
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep()], peers=[Peer("n1", "10.1.0.2", "192.168.5.2")])
    assert "peers[0].ip" in fields(e)
    # The same IP on two networks is fine (even with the same subnet).
    node(networks=[net(), net("n2", 101)],
         endpoints=[ep(), ep("e2", "n2", netns="/run/netns/c2")],
         peers=[Peer("n2", "10.1.0.3", "192.168.5.2"), Peer("n1", "10.1.0.3", "192.168.5.3")])


def test_duplicate_mac_in_a_network() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep(mac="02:00:00:00:00:01")],
             peers=[Peer("n1", "10.1.0.7", "192.168.5.2", mac="02:00:00:00:00:01")])
    assert fields(e) == ["peers[0].mac"]


def test_duplicate_ids_and_vnis() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[net(), net("n1", 200, "10.2.0.0/24")])
    assert fields(e) == ["networks[1].id"]
    with pytest.raises(StateError) as e:
        node(networks=[net(), net("n2", 100, "10.2.0.0/24")])
    assert fields(e) == ["networks[n2].vni"] and "also used by network 'n1'" in str(e.value)
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep(), ep(addr="10.1.0.3/24", netns="/run/netns/c2")])
    assert fields(e) == ["endpoints[e1].id"]


def test_references() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep(network="nx")], peers=[Peer("ny", "10.1.0.3", "192.168.5.2")])
    assert sorted(fields(e)) == ["endpoints[e1].network_id", "peers[0].network_id"]
    with pytest.raises(StateError) as e:
        node(networks=[net()], peers=[Peer("n1", "10.1.0.3", "192.168.5.1")])
    assert fields(e) == ["peers[0].node"] and "own address" in str(e.value)


def test_container_interfaces() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[net(), net("n2", 101, "10.2.0.0/24")],
             endpoints=[ep(), ep("e2", "n2", "10.2.0.2/24")])
    assert fields(e) == ["endpoints[e2].ifname"]
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=[ep(), ep("e2", addr="10.1.0.3/24", ifname="eth1")])
    assert fields(e) == ["endpoints[e2].netns"] and "already on network 'n1'" in str(e.value)
    with pytest.raises(StateError) as e:
        node(networks=[net(), net("n2", 101, "10.1.0.0/16")],
             endpoints=[ep(), ep("e2", "n2", "10.1.9.2/16", ifname="eth1")])
    assert fields(e) == ["endpoints[e2].network_id"] and "overlap" in str(e.value)


def test_egress_subnet_rules() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[net(subnet="172.18.5.0/24")])
    assert fields(e) == ["networks[n1].subnet"] and "egress subnet" in str(e.value)
    eps = [ep(f"e{i}", addr=f"10.1.0.{i + 2}/24", netns=f"/run/netns/c{i}") for i in range(6)]
    with pytest.raises(StateError) as e:
        node(networks=[net()], endpoints=eps, egress=Egress("172.30.0.0/29"))
    assert fields(e) == ["egress.subnet"] and "room for 5" in str(e.value)


def test_wrong_types_are_reported_not_crashing() -> None:
    with pytest.raises(StateError) as e:
        node(networks=[{"id": "n1"}], endpoints="eth0")
    assert sorted(fields(e)) == ["endpoints", "networks[0]"]


def test_mtu_follows_the_underlay() -> None:
    s = node(networks=[net(), net("n2", 101, "10.2.0.0/24", mtu=1300)])
    assert [s.mtu_of(n) for n in s.networks] == [1450, 1300]
    s = node(networks=[net(), net("n2", 101, "10.2.0.0/24", mtu=1300)], underlay_mtu=1400)
    assert [s.mtu_of(n) for n in s.networks] == [1350, 1300]
    s = node(networks=[net(mtu=8950)], underlay_mtu=9000)
    assert s.mtu_of(s.networks[0]) == 8950
    assert s.egress_mtu == 9000
    # A loopback underlay (65536, larger than any IP MTU) is accepted; the
    # egress link gets the largest MTU a link can have.
    s = node(networks=[net(mtu=65000)], underlay_mtu=65536)
    assert s.mtu_of(s.networks[0]) == 65000 and s.egress_mtu == 65535
    with pytest.raises(StateError) as e:
        node(underlay_mtu=65537)
    assert fields(e) == ["underlay_mtu"]
