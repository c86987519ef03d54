"""The network allocator's state: which subnets, VXLAN ids, task addresses
and service virtual IPs are in use, and decisions over api objects.

Pure (no store, no I/O): the leader's allocator stage builds one with
`Allocator.restore()` from what the store holds when it takes office, asks
it for allocations while it plans, and tells it what was removed. Every
value it hands out is written to the store in the same transaction as the
object that holds it; if that transaction fails the caller restores a fresh
allocator from the store, so memory and store can never disagree for long
and nothing is handed out twice while its holder exists.

Holders: a Network holds its VNI and subnet (`Network.allocation`), a Task
one address per network it is on (`Task.networks`), a Service one virtual
IP per network in VIP mode (`Service.endpoint.virtual_ips`) and its
published ports (`Service.endpoint.ports`, see `ports.py`).

The ingress network: a service publishing any port gets a VIP on it (in
VIP mode) and its tasks an address on it, first, as if the spec named it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from api.objects import (
    AddressPoolSpec,
    Endpoint,
    EndpointMode,
    Network,
    NetworkAllocation,
    NetworkAttachment,
    NetworkAttachmentConfig,
    PortConfig,
    Service,
    Task,
    VirtualIP,
    held_ports,
    port_claims,
)

from .ipam import AddressPool, AllocationError, SubnetPool, VNIPool, parse_iface
from .ports import PublishedPorts

__all__ = ["Allocator", "AllocationError", "Pending"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pending:
    """Why a task or service cannot be allocated yet (it stays where it is)."""

    reason: str


NO_INGRESS = ("the service publishes ports but the cluster has no ingress network: "
              "create one with `orch network create --ingress ingress`")


class Allocator:
    def __init__(self, pool: AddressPoolSpec | None = None) -> None:
        pool = pool or AddressPoolSpec()
        self.subnets = SubnetPool(pool.pools, pool.subnet_size)
        self.vnis = VNIPool()
        self.pools: dict[str, AddressPool] = {}  # network id -> its addresses
        self._nets: dict[str, NetworkAllocation] = {}
        self.ports = PublishedPorts()

    # -- restore -----------------------------------------------------------------

    @classmethod
    def restore(cls, pool: AddressPoolSpec | None, networks: Iterable[Network],
                services: Iterable[Service], tasks: Iterable[Task]) -> Allocator:
        """An allocator holding exactly what the store says is in use. A value
        held twice (which only a bug could write) is logged, not fatal: the
        second holder keeps it in the store and the allocator counts it once."""
        a = cls(pool)
        for n in networks:
            if n.allocation is not None:
                try:
                    a._adopt_network(n)
                except AllocationError as e:
                    log.error("network %s: stored allocation conflicts: %s", n.id, e)
        for s in services:
            for vip in s.endpoint.virtual_ips:
                a._adopt_addr(vip.network_id, vip.addr, f"service {s.id}")
            a._adopt_ports(s)
        for t in tasks:
            for att in t.networks:
                for addr in att.addresses:
                    a._adopt_addr(att.network_id, addr, f"task {t.id}")
        return a

    def _adopt_network(self, n: Network) -> None:
        """Hold what the store says the network has. Conflicts (only a bug
        could store them) are logged and the network is adopted anyway: its
        tasks' addresses must be counted, and its VNI never handed out again."""
        al = n.allocation
        assert al is not None
        subnet = IPv4Network(al.subnet)
        user_subnet = bool(n.spec.ipam)
        try:
            self.vnis.reserve(al.vni)
        except AllocationError as e:
            log.error("network %s: stored VNI: %s", n.id, e)
        try:
            self.subnets.reserve(subnet, from_pool=not user_subnet)
        except AllocationError as e:
            log.error("network %s: stored subnet: %s", n.id, e)
            self.subnets.reserve(subnet, from_pool=False)
        ip_range = IPv4Network(n.spec.ipam[0].ip_range) if user_subnet and n.spec.ipam[0].ip_range else None
        self.pools[n.id] = AddressPool(subnet, IPv4Address(al.gateway), ip_range)
        self._nets[n.id] = al

    def _adopt_ports(self, s: Service) -> None:
        claims = port_claims(s.spec.endpoint_spec, s.endpoint)
        for c in claims:
            other = self.ports.conflict(s.id, c)
            if other is not None:  # the store refuses this: only a bug could have written it
                log.error("service %s: stored published port %s/%s is also held by service %s",
                          s.id, c[1], c[0], other)
        self.ports.hold(s.id, claims)

    def hold_ports(self, s: Service) -> None:
        """Follow a write of `s` the allocator did not make (the control API
        changed its spec): it now holds what its spec and endpoint say."""
        self.ports.hold(s.id, port_claims(s.spec.endpoint_spec, s.endpoint))

    def _adopt_addr(self, network_id: str, addr: str, holder: str) -> None:
        pool = self.pools.get(network_id)
        if pool is None:
            return  # its network is gone or not allocated: nothing to hold
        try:
            ip, _ = parse_iface(addr)
            pool.reserve(ip)
        except (AllocationError, ValueError) as e:
            log.error("%s: stored address %s on network %s: %s", holder, addr, network_id, e)

    # -- networks -----------------------------------------------------------------

    def allocate_network(self, n: Network) -> Network:
        """`n` with its allocation (VNI, subnet, gateway); `n` itself when it
        has one already. Raises AllocationError naming the field."""
        if n.allocation is not None:
            if n.id not in self.pools:
                self._adopt_network(n)
            return n
        ipam = n.spec.ipam[0] if n.spec.ipam else None
        fixed_vni = n.spec.options.get("vni")
        vni = int(fixed_vni) if fixed_vni else None
        if vni is not None:
            self.vnis.reserve(vni)
        else:
            vni = self.vnis.allocate()
        try:
            if ipam is not None:
                subnet = IPv4Network(ipam.subnet)
                self.subnets.reserve(subnet, from_pool=False)
            else:
                subnet = self.subnets.allocate()
        except AllocationError:
            self.vnis.release(vni)
            raise
        gateway = IPv4Address(ipam.gateway) if ipam is not None and ipam.gateway else subnet.network_address + 1
        ip_range = IPv4Network(ipam.ip_range) if ipam is not None and ipam.ip_range else None
        try:
            pool = AddressPool(subnet, gateway, ip_range)
        except AllocationError:
            self.vnis.release(vni)
            self.subnets.release(subnet)
            raise
        al = NetworkAllocation(vni=vni, subnet=str(subnet), gateway=str(gateway))
        self.pools[n.id] = pool
        self._nets[n.id] = al
        return n.model_copy(update={"allocation": al})

    def release_network(self, n: Network | str) -> None:
        nid = n if isinstance(n, str) else n.id
        al = self._nets.pop(nid, None)
        self.pools.pop(nid, None)
        if al is not None:
            if not any(o.vni == al.vni for o in self._nets.values()):  # a stored duplicate keeps it
                self.vnis.release(al.vni)
            self.subnets.release(IPv4Network(al.subnet))

    # -- services -------------------------------------------------------------------

    def allocate_service(self, s: Service, networks: Mapping[str, Network],
                         ingress: Network | None = None) -> Service | Pending:
        """`s` with one VIP per network its tasks are on (VIP mode; none in
        dnsrr mode), the ingress network first when it publishes ports, and
        its published ports, each with its
        published_port filled in. VIPs of networks and ports still wanted
        are kept; others are released. Returns `s` itself when nothing changes."""
        spec = s.spec.endpoint_spec
        want: list[str] = []
        if spec.needs_ingress:
            if ingress is None:
                return Pending(NO_INGRESS)
            if spec.mode == EndpointMode.VIP:
                want.append(ingress.id)
        if spec.mode == EndpointMode.VIP:
            for att in s.spec.task.networks:
                if att.target not in want:
                    want.append(att.target)
        for nid in want:
            if nid not in networks:
                return Pending(f"network {nid} does not exist")
            if nid not in self.pools:
                return Pending(f"network {networks[nid].spec.name} is not allocated yet")
        have = {v.network_id: v for v in s.endpoint.virtual_ips}
        keep: list[VirtualIP] = []
        new: list[VirtualIP] = []
        try:
            for nid in want:
                if nid in have:
                    keep.append(have[nid])
                else:
                    pool = self.pools[nid]
                    new.append(VirtualIP(network_id=nid, addr=pool.iface(pool.allocate())))
        except AllocationError as e:
            for v in new:
                self._release_addr(v.network_id, v.addr)
            return Pending(f"no virtual IP: {e}")
        ports = self._allocate_ports(s)
        if isinstance(ports, Pending):
            for v in new:
                self._release_addr(v.network_id, v.addr)
            return ports
        dropped = [v for nid, v in have.items() if nid not in want]
        if not new and not dropped and s.endpoint.spec == spec and ports == s.endpoint.ports:
            return s
        for v in dropped:
            self._release_addr(v.network_id, v.addr)
        by_net = {v.network_id: v for v in keep + new}
        vips = tuple(by_net[nid] for nid in want)
        endpoint = Endpoint(spec=spec, virtual_ips=vips, ports=ports)
        self.ports.hold(s.id, port_claims(spec, endpoint))
        return s.model_copy(update={"endpoint": endpoint})

    def _allocate_ports(self, s: Service) -> tuple[PortConfig, ...] | Pending:
        """The service's ports as its spec asks for them: those it has kept,
        fixed ones as given (the store let the spec claim them), dynamic ones
        new from the pool. Not held yet: the caller holds them with its result."""
        spec = s.spec.endpoint_spec
        out: list[PortConfig] = []
        taken: list[PortConfig] = []
        for w, h in zip(spec.ports, held_ports(spec, s.endpoint)):
            if h is not None:
                out.append(h if h.name == w.name else h.model_copy(update={"name": w.name}))
                continue
            if w.published_port:
                other = self.ports.conflict(s.id, (w.protocol, w.published_port, w.publish_mode))
                if other is not None:  # the store refuses it; only a stale allocator sees this
                    self._unused(taken)
                    return Pending(f"published port {w.label} is held by service {other}")
                out.append(w)
                continue
            try:
                port = self.ports.allocate(w.protocol)
            except AllocationError as e:
                self._unused(taken)
                return Pending(f"no published port: {e.message}")
            p = w.model_copy(update={"published_port": port})
            taken.append(p)
            out.append(p)
        return tuple(out)

    def _unused(self, ports: Iterable[PortConfig]) -> None:
        for p in ports:
            self.ports.unused(p.protocol, p.published_port)

    def release_service(self, s: Service) -> None:
        for v in s.endpoint.virtual_ips:
            self._release_addr(v.network_id, v.addr)
        self.ports.drop(s.id)

    # -- tasks -------------------------------------------------------------------------

    def allocate_task(self, t: Task, networks: Mapping[str, Network], ingress: str | None = None) -> Task | Pending:
        """`t` with one address per network of its spec (and first one on
        network `ingress`, when given: its service publishes ports), all or
        none; `t` itself when it has them already or is on no
        network."""
        configs = list(t.spec.networks)
        if ingress is not None and all(c.target != ingress for c in configs):
            configs.insert(0, NetworkAttachmentConfig(target=ingress))
        if t.networks or not configs:
            return t
        atts: list[NetworkAttachment] = []
        for cfg in configs:
            n = networks.get(cfg.target)
            if n is None:
                self._release_attachments(atts)
                return Pending(f"network {cfg.target} does not exist")
            pool = self.pools.get(n.id)
            if pool is None:
                self._release_attachments(atts)
                return Pending(f"network {n.spec.name} is not allocated yet")
            try:
                ip = pool.allocate()
            except AllocationError as e:
                self._release_attachments(atts)
                return Pending(f"network {n.spec.name}: {e}")
            atts.append(NetworkAttachment(network_id=n.id, addresses=(pool.iface(ip),), aliases=cfg.aliases))
        return t.model_copy(update={"networks": tuple(atts)})

    def release_task(self, t: Task) -> None:
        self._release_attachments(t.networks)

    def _release_attachments(self, atts: Iterable[NetworkAttachment]) -> None:
        for att in atts:
            for addr in att.addresses:
                self._release_addr(att.network_id, addr)

    def _release_addr(self, network_id: str, addr: str) -> None:
        pool = self.pools.get(network_id)
        if pool is not None:
            ip, _ = parse_iface(addr)
            pool.release(ip)

    # -- accounting -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """What is in use, for tests and `cluster status`: VNIs, pool subnets,
        and addresses per network id (gateways excluded)."""
        out = {"vnis": self.vnis.in_use, "pool_subnets": self.subnets.allocated(), "ports": self.ports.in_use()}
        for nid, pool in self.pools.items():
            out[f"addrs:{nid}"] = pool.in_use() - 1
        return out
