"""Address, subnet and VXLAN id pools: the bookkeeping under the allocator.

Pure data structures, no store and no I/O. Each pool hands out the next free
value after the last one it gave (next fit), so a value just released is the
last to come back: a task's old address stays out of use while stale ARP,
neighbour and conntrack entries for it age out elsewhere.

Errors are `AllocationError`s whose `field` names what was asked for and
whose message says what to do.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from api.objects import VNI_MAX, VNI_MIN

__all__ = ["AddressPool", "AllocationError", "SubnetPool", "VNIPool"]


class AllocationError(Exception):
    """An allocation cannot be made: `field` names the input (a network's
    ipam.subnet, a service's network...), the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class _NextFit:
    """Integers in [lo, hi] handed out next-fit; `used` is the set in use."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi
        self.used: set[int] = set()
        self._next = lo

    @property
    def size(self) -> int:
        return max(0, self.hi - self.lo + 1)

    @property
    def free(self) -> int:
        return self.size - len(self.used)

    def take(self) -> int | None:
        if self.free <= 0:
            return None
        n = self._next
        for _ in range(self.size):
            if n > self.hi:
                n = self.lo
            if n not in self.used:
                self.used.add(n)
                self._next = n + 1
                return n
            n += 1
        return None  # unreachable while free > 0

    def reserve(self, n: int) -> bool:
        if n < self.lo or n > self.hi or n in self.used:
            return False
        self.used.add(n)
        return True

    def release(self, n: int) -> bool:
        if n in self.used:
            self.used.remove(n)
            return True
        return False


class AddressPool:
    """The addresses of one network's subnet. The network and broadcast
    addresses are never given out; the gateway is reserved for the network
    itself; `ip_range`, when given, limits where dynamic addresses come from
    (specific addresses may still be reserved anywhere in the subnet)."""

    def __init__(self, subnet: IPv4Network, gateway: IPv4Address, ip_range: IPv4Network | None = None) -> None:
        if gateway not in subnet:
            raise AllocationError("ipam.gateway", f"{gateway} is outside subnet {subnet}")
        if ip_range is not None and not ip_range.subnet_of(subnet):
            raise AllocationError("ipam.ip_range", f"{ip_range} is outside subnet {subnet}")
        self.subnet = subnet
        self.gateway = gateway
        self.prefixlen = subnet.prefixlen
        lo, hi = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
        if ip_range is not None:
            lo = max(lo, int(ip_range.network_address))
            hi = min(hi, int(ip_range.broadcast_address))
        self._dyn = _NextFit(lo, hi)
        self._other: set[int] = set()  # reserved addresses outside the dynamic range
        self._gw = int(gateway)
        self._host_lo, self._host_hi = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
        if not self._reserve_int(self._gw):
            raise AllocationError("ipam.gateway", f"{gateway} cannot be used as the gateway of {subnet}")

    @property
    def size(self) -> int:
        """Addresses tasks and VIPs can get dynamically (the gateway excluded)."""
        return self._dyn.size - (1 if self._dyn.lo <= self._gw <= self._dyn.hi else 0)

    @property
    def free(self) -> int:
        return self._dyn.free

    def in_use(self) -> int:
        return len(self._dyn.used) + len(self._other)

    def allocate(self) -> IPv4Address:
        n = self._dyn.take()
        if n is None:
            raise AllocationError("", f"no free address left in {self.subnet}: the network is full "
                                      "(use a larger subnet or fewer tasks on it)")
        return IPv4Address(n)

    def _reserve_int(self, n: int) -> bool:
        if self._dyn.lo <= n <= self._dyn.hi:
            return self._dyn.reserve(n)
        if not self._host_lo <= n <= self._host_hi or n in self._other:
            return False
        self._other.add(n)
        return True

    def reserve(self, ip: IPv4Address) -> None:
        """Mark a specific address as in use (restoring from the store, or a
        user's fixed address); an error if it is outside the subnet or taken."""
        if ip not in self.subnet:
            raise AllocationError("", f"{ip} is outside subnet {self.subnet}")
        if not self._reserve_int(int(ip)):
            raise AllocationError("", f"{ip} is already in use in {self.subnet}")

    def release(self, ip: IPv4Address) -> bool:
        n = int(ip)
        if n == self._gw:
            return False
        if self._dyn.release(n):
            return True
        if n in self._other:
            self._other.remove(n)
            return True
        return False

    def iface(self, ip: IPv4Address) -> str:
        """`ip` with this subnet's prefix length, as stored: "10.0.1.5/24"."""
        return f"{ip}/{self.prefixlen}"


class SubnetPool:
    """Subnets for networks that did not bring their own: each pool is
    carved into subnets of `size` bits, the first one free of every subnet
    in use (user-given ones included) is handed out. User-given subnets may
    overlap each other (networks are isolated); they are counted so that
    pool subnets avoid them."""

    def __init__(self, pools: Iterable[str], size: int) -> None:
        self.pools = [IPv4Network(p) for p in pools]
        self.size = size
        for p in self.pools:
            if p.prefixlen > size:
                raise AllocationError("default_addr_pool", f"pool {p} is smaller than /{size}")
        self._in_use: Counter[IPv4Network] = Counter()
        self._from_pool: set[IPv4Network] = set()
        self._cursor = 0  # index into the flat sequence of candidate subnets

    def _candidate(self, i: int) -> IPv4Network:
        """The i-th subnet of the flat sequence over every pool."""
        for p in self.pools:
            n = 1 << (self.size - p.prefixlen)
            if i < n:
                return IPv4Network((int(p.network_address) + (i << (32 - self.size)), self.size))
            i -= n
        raise IndexError(i)

    def total(self) -> int:
        return sum(1 << (self.size - p.prefixlen) for p in self.pools)

    def allocated(self) -> int:
        return len(self._from_pool)

    def _free(self, cand: IPv4Network) -> bool:
        return not any(cand.overlaps(u) for u in self._in_use)

    def allocate(self) -> IPv4Network:
        total = self.total()
        # Next fit over the flat candidate sequence (65,536 /24s in 10.0.0.0/8);
        # in practice the walk ends at the cursor.
        for i in range(total):
            c = self._candidate((self._cursor + i) % total)
            if self._free(c):
                self._cursor = (self._cursor + i + 1) % total
                self._in_use[c] += 1
                self._from_pool.add(c)
                return c
        raise AllocationError("default_addr_pool", f"no free /{self.size} subnet left in "
                              f"{', '.join(map(str, self.pools))}: give the network a --subnet")

    def reserve(self, subnet: IPv4Network, *, from_pool: bool) -> None:
        """Count a subnet as used. `from_pool`: it came from this pool (restoring
        a network the allocator gave it), so no other pool subnet may overlap
        it; a user's subnet may (networks are isolated), whatever order they
        are restored in."""
        if from_pool:
            if any(subnet.overlaps(p) for p in self._from_pool):
                raise AllocationError("ipam.subnet", f"{subnet} overlaps another subnet of the pool")
            self._from_pool.add(subnet)
        self._in_use[subnet] += 1

    def release(self, subnet: IPv4Network) -> None:
        if self._in_use[subnet] <= 1:
            del self._in_use[subnet]
            self._from_pool.discard(subnet)
        else:
            self._in_use[subnet] -= 1

    def is_pool_subnet(self, subnet: IPv4Network) -> bool:
        return subnet.prefixlen == self.size and any(subnet.subnet_of(p) for p in self.pools)


class VNIPool:
    """VXLAN network ids: dynamic ones from VNI_MIN up, fixed ones anywhere."""

    def __init__(self, lo: int = VNI_MIN, hi: int = VNI_MAX) -> None:
        self._dyn = _NextFit(lo, hi)
        self._fixed: set[int] = set()

    @property
    def in_use(self) -> int:
        return len(self._dyn.used) + len(self._fixed)

    def allocate(self) -> int:
        n = self._dyn.take()
        if n is None:
            raise AllocationError("options.vni", "no free VXLAN id left")
        return n

    def reserve(self, vni: int) -> None:
        if not 1 <= vni <= VNI_MAX:
            raise AllocationError("options.vni", f"{vni} is out of range 1-{VNI_MAX}")
        if self._dyn.lo <= vni <= self._dyn.hi:
            ok = self._dyn.reserve(vni)
        else:
            ok = vni not in self._fixed
            self._fixed.add(vni)
        if not ok:
            raise AllocationError("options.vni", f"VXLAN id {vni} is already used by another network")

    def release(self, vni: int) -> None:
        if not self._dyn.release(vni):
            self._fixed.discard(vni)


def parse_iface(addr: str) -> tuple[IPv4Address, int]:
    """"10.0.1.5/24" -> (10.0.1.5, 24)."""
    iface = ipaddress.IPv4Interface(addr)
    return iface.ip, iface.network.prefixlen
