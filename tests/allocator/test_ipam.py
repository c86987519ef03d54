"""The pools under the allocator: next fit, exhaustion, reservation rules."""

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from manager.allocator.ipam import AddressPool, AllocationError, SubnetPool, VNIPool


def test_address_pool_skips_network_broadcast_and_gateway_and_exhausts() -> None:
    p = AddressPool(N("10.0.1.0/29"), A("10.0.1.1"))
    got = [p.allocate() for _ in range(5)]
    assert got == [A("10.0.1.2"), A("10.0.1.3"), A("10.0.1.4"), A("10.0.1.5"), A("10.0.1.6")]
    assert p.free == 0
    with pytest.raises(AllocationError, match="no free address left in 10.0.1.0/29"):
        p.allocate()


def test_address_pool_next_fit_does_not_hand_back_a_just_released_address() -> None:
    p = AddressPool(N("10.0.1.0/24"), A("10.0.1.1"))
    a = p.allocate()
    b = p.allocate()
    assert p.release(a)
    c = p.allocate()
    assert c not in (a, b)
    assert not p.release(A("10.0.1.1")), "the gateway is never released"


def test_address_pool_ip_range_and_reserve() -> None:
    p = AddressPool(N("10.0.0.0/24"), A("10.0.0.1"), N("10.0.0.128/30"))
    assert [p.allocate() for _ in range(4)] == [A("10.0.0.128"), A("10.0.0.129"), A("10.0.0.130"), A("10.0.0.131")]
    p.reserve(A("10.0.0.7"))  # outside the range, inside the subnet
    with pytest.raises(AllocationError, match="already in use"):
        p.reserve(A("10.0.0.7"))
    with pytest.raises(AllocationError, match="outside subnet"):
        p.reserve(A("10.0.1.7"))
    with pytest.raises(AllocationError, match="already in use"):
        p.reserve(A("10.0.0.1"))
    assert p.in_use() == 6  # gateway + 4 + 1


def test_gateway_outside_subnet_is_refused() -> None:
    with pytest.raises(AllocationError, match="outside subnet"):
        AddressPool(N("10.0.0.0/24"), A("10.0.9.1"))


def test_subnet_pool_avoids_user_subnets_and_exhausts() -> None:
    sp = SubnetPool(["10.9.0.0/22"], 24)
    sp.reserve(N("10.9.0.0/23"), from_pool=False)  # a user's network overlapping the pool
    assert sp.allocate() == N("10.9.2.0/24")
    assert sp.allocate() == N("10.9.3.0/24")
    with pytest.raises(AllocationError, match="no free /24 subnet"):
        sp.allocate()
    sp.release(N("10.9.2.0/24"))
    assert sp.allocate() == N("10.9.2.0/24")
    assert sp.allocated() == 2


def test_user_subnets_may_overlap_each_other() -> None:
    sp = SubnetPool(["10.0.0.0/8"], 24)
    sp.reserve(N("192.168.5.0/24"), from_pool=False)
    sp.reserve(N("192.168.5.0/24"), from_pool=False)
    sp.release(N("192.168.5.0/24"))
    assert not sp._free(N("192.168.5.0/24")), "still used by the second network"
    sp.release(N("192.168.5.0/24"))
    assert sp._free(N("192.168.5.0/24"))


def test_vni_pool_fixed_and_dynamic() -> None:
    v = VNIPool(4096, 4098)
    v.reserve(4097)
    assert v.allocate() == 4096
    assert v.allocate() == 4098
    with pytest.raises(AllocationError, match="no free VXLAN id"):
        v.allocate()
    v.reserve(100)
    with pytest.raises(AllocationError, match="already used"):
        v.reserve(100)
    with pytest.raises(AllocationError, match="out of range"):
        v.reserve(1 << 24)
    v.release(100)
    v.reserve(100)
