"""This node's overlay networking for its tasks: from the assignment set
(networks, endpoint tables, local tasks) to the dataplane's desired state.

A task on networks gets a named network namespace of its own
(`/run/netns/<prefix>task-<id>`), made before its container and given to the
runtime, so the container starts with its interfaces already in place and
keeps them across daemon restarts (the namespace outlives both). Its
interfaces are programmed by `overlay_net` (one sandbox per network with a
bridge and a VXLAN device, static peers from the endpoint tables) and the
namespace is removed with its container.

`desired()` is pure: the assignment set and the set of local namespaces in,
an `overlay_net.NodeState` out. `sync()` applies it whole (idempotent: a
converged node does nothing), `prepare()` programs one new task's namespace
before its container starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from api.objects import INGRESS_ATTACHMENT, Network, Task
from api.probe import NULL_PROBE, Probe
from api.session import Endpoint as TableEntry
from overlay_net.lb import Balancer, IngressPort, VirtualService
from overlay_net.model import Endpoint, HostPort, NodeState, Peer
from overlay_net.model import Network as OverlayNetwork

if TYPE_CHECKING:
    from overlay_net.manager import NetworkDataplane

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
REPAIR_EVERY = 30.0
"""Seconds after which an unchanged desired state is applied again anyway
(repairs drift: a device someone removed by hand)."""


class NetworkSetupError(Exception):
    """A task's networks could not be set up; the message says why."""


def task_netns_name(prefix: str, task_id: str) -> str:
    return f"{prefix}task-{task_id}"


def is_ingress_sandbox(task: Task) -> bool:
    """A node's ingress sandbox task: a namespace on the ingress network,
    with no container, that balances the routing mesh's published ports
    (see `balancers`)."""
    return task.attachment == INGRESS_ATTACHMENT


def is_ingress(network: Network | None) -> bool:
    return network is not None and network.spec.ingress


def _ip(address: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Interface(address).ip


def wants_network(task: Task) -> bool:
    """A task keeps its interfaces while its container may run: also when
    wanted stopped, through its stop grace period (its namespace goes with
    its container)."""
    return bool(task.networks) and not task.status.state.terminal


def desired(prefix: str, underlay: str, tasks: Iterable[Task], networks: Mapping[str, Network],
            tables: Mapping[str, Mapping[str, TableEntry]], ready: set[str]) -> NodeState:
    """The node's desired overlay state. `tasks`: the local tasks; `ready`:
    ids of those whose namespace exists; `networks` and `tables`: what the
    managers sent (network id -> network; network id -> task id -> entry).
    A network is present when a local task on it has a namespace; its peers
    are the table's entries on other nodes."""
    eps: list[Endpoint] = []
    used: set[str] = set()
    for t in tasks:
        if t.id not in ready or not wants_network(t):
            continue
        for i, att in enumerate(t.networks):
            n = networks.get(att.network_id)
            if n is None or n.allocation is None or not att.addresses:
                continue
            used.add(n.id)
            eps.append(Endpoint(id=f"{t.id}.{i}", network_id=n.id,
                                netns=os.path.join(NETNS_DIR, task_netns_name(prefix, t.id)),
                                ifname=f"eth{i}", address=ipaddress.IPv4Interface(att.addresses[0])))
    nets = []
    for nid in sorted(used):
        n = networks[nid]
        al = n.allocation
        assert al is not None
        nets.append(OverlayNetwork(id=nid, vni=al.vni, subnet=ipaddress.IPv4Network(al.subnet),
                                   gateway=ipaddress.IPv4Address(al.gateway), mtu=n.spec.mtu,
                                   internal=n.spec.internal))
    peers: list[Peer] = []
    me = ipaddress.IPv4Address(underlay)
    published = host_ports(prefix, tasks, networks, tables, ready)
    for nid in sorted(used):
        for e in tables.get(nid, {}).values():
            try:
                node = ipaddress.IPv4Address(e.node_addr)
                ip = ipaddress.IPv4Interface(e.address).ip
            except ValueError:
                log.warning("endpoint %s on network %s: unusable addresses %r / %r", e.task_id, nid,
                            e.node_addr, e.address)
                continue
            if node != me:
                peers.append(Peer(network_id=nid, ip=ip, node=node))
    return NodeState(prefix=prefix, underlay_addr=me, networks=tuple(nets), endpoints=tuple(eps),
                     peers=tuple(peers), published=published)


def _ingress_table(networks: Mapping[str, Network],
                   tables: Mapping[str, Mapping[str, TableEntry]]) -> Mapping[str, TableEntry]:
    for nid, n in networks.items():
        if is_ingress(n):
            return tables.get(nid, {})
    return {}


def ingress_ports(networks: Mapping[str, Network],
                  tables: Mapping[str, Mapping[str, TableEntry]]) -> list[IngressPort]:
    """The routing mesh's published ports and, for each, the serving tasks
    (address on the ingress network, target port) behind it."""
    ports: dict[tuple[str, int], list[tuple[ipaddress.IPv4Address, int]]] = {}
    for e in _ingress_table(networks, tables).values():
        for p in e.ports:
            if p.mode != "ingress":
                continue
            backends = ports.setdefault((p.protocol, p.published), [])
            if e.serving:
                backends.append((_ip(e.address), p.target))
    return [IngressPort(proto, port, tuple(b)) for (proto, port), b in sorted(ports.items())]


def virtual_services(table: Mapping[str, TableEntry]) -> list[VirtualService]:
    """A network's virtual IPs, each with its service's serving tasks."""
    by_vip: dict[str, list[ipaddress.IPv4Address]] = {}
    for e in table.values():
        if e.vip:
            backends = by_vip.setdefault(e.vip, [])
            if e.serving:
                backends.append(_ip(e.address))
    return [VirtualService(_ip(v), tuple(b)) for v, b in sorted(by_vip.items())]


def balancers(prefix: str, tasks: Iterable[Task], networks: Mapping[str, Network],
              tables: Mapping[str, Mapping[str, TableEntry]], ready: set[str]) -> dict[str, Balancer]:
    """The load-balancing table of each local namespace: a task's balances
    the virtual IPs of the networks it is on; the ingress sandbox's, the
    published ports."""
    out: dict[str, Balancer] = {}
    for t in tasks:
        if t.id not in ready or not wants_network(t):
            continue
        path = os.path.join(NETNS_DIR, task_netns_name(prefix, t.id))
        if is_ingress_sandbox(t):
            idx = next((i for i, a in enumerate(t.networks) if is_ingress(networks.get(a.network_id))), None)
            if idx is not None:
                out[path] = Balancer(ports=tuple(ingress_ports(networks, tables)), ingress_ifname=f"eth{idx}")
            continue
        vips: list[VirtualService] = []
        for att in t.networks:
            n = networks.get(att.network_id)
            if n is not None and not is_ingress(n):
                vips.extend(virtual_services(tables.get(n.id, {})))
        out[path] = Balancer(vips=tuple(vips))
    return out


def _addresses(state: NodeState) -> set[ipaddress.IPv4Address]:
    """Overlay addresses a node state makes reachable (peers and local endpoints)."""
    return {p.ip for p in state.peers} | {e.address.ip for e in state.endpoints}


def _only_backends(wanted: dict[str, Balancer], reachable: set[ipaddress.IPv4Address]) -> dict[str, Balancer]:
    """The balancers with only the backends in `reachable`."""
    out = {}
    for ns, b in wanted.items():
        out[ns] = dataclasses.replace(
            b, vips=tuple(dataclasses.replace(v, backends=tuple(x for x in v.backends if x in reachable))
                          for v in b.vips),
            ports=tuple(dataclasses.replace(p, backends=tuple(x for x in p.backends if x[0] in reachable))
                        for p in b.ports))
    return out


def host_ports(prefix: str, tasks: Iterable[Task], networks: Mapping[str, Network],
               tables: Mapping[str, Mapping[str, TableEntry]], ready: set[str]) -> tuple[HostPort, ...]:
    """Ports this node accepts on its own addresses: every routing-mesh port
    (to its ingress sandbox, same port) and the host-mode ports of its own
    tasks (to the task, its target port). A port claimed twice is logged
    and given to the first claimant (the scheduler keeps host ports apart)."""
    out: dict[tuple[str, int], HostPort] = {}

    def claim(hp: HostPort) -> None:
        key = (hp.protocol, hp.port)
        if key in out:
            if out[key] != hp:
                log.warning("port %d/%s is published twice on this node; %s keeps it", hp.port, hp.protocol,
                            out[key].netns)
            return
        out[key] = hp

    table = _ingress_table(networks, tables)
    for t in tasks:
        if t.id not in ready or not wants_network(t):
            continue
        path = os.path.join(NETNS_DIR, task_netns_name(prefix, t.id))
        if is_ingress_sandbox(t):  # (an internal ingress network is refused by the managers)
            for p in ingress_ports(networks, tables):
                claim(HostPort(p.protocol, p.published, path, p.published))
            continue
        e = table.get(t.id)
        own = [p for p in (e.ports if e is not None else ()) if p.mode == "host"]
        if not own:
            continue
        nets = [networks[a.network_id] for a in t.networks if a.network_id in networks]
        if all(n.spec.internal for n in nets):
            # Only a namespace with an egress interface can be reached from the node.
            _warn_once(f"task {t.id} publishes ports in host mode but is on internal networks only; "
                       "not published")
            continue
        for p in own:
            claim(HostPort(p.protocol, p.published, path, p.target))
    return tuple(out[k] for k in sorted(out))


@functools.lru_cache(maxsize=1024)
def _warn_once(message: str) -> None:
    """Log a warning the first time (the tables are recomputed at every change)."""
    log.warning("%s", message)


class TaskNetworks:
    """The agent's side of overlay networking (one per daemon).

    `underlay` returns this node's underlay IPv4 address (its advertise
    address), None before the node joined a cluster."""

    def __init__(self, prefix: str, underlay: Callable[[], str | None]) -> None:
        self.prefix = prefix
        self.underlay = underlay
        self._dp: NetworkDataplane | None = None
        self._lock = asyncio.Lock()
        self._applied: NodeState | None = None  # the state the last sync applied, and when
        self._applied_at = 0.0
        self._resolver: Any = None  # overlay_net.dns.Resolver, made with the first networked task
        self.probe: Probe = NULL_PROBE  # DNS queries and nftables writes, for the daemon's metrics

    def netns_path(self, task_id: str) -> str:
        return os.path.join(NETNS_DIR, task_netns_name(self.prefix, task_id))

    def has_netns(self, task_id: str) -> bool:
        return os.path.exists(self.netns_path(task_id))

    def _local_netns(self) -> set[str]:
        """Ids of tasks whose namespace exists on this node."""
        head = f"{self.prefix}task-"
        try:
            return {n[len(head):] for n in os.listdir(NETNS_DIR) if n.startswith(head)}
        except FileNotFoundError:
            return set()

    def _dataplane(self) -> tuple[NetworkDataplane, str]:
        addr = self.underlay()
        if not addr:
            raise NetworkSetupError("this node has no underlay address yet (not part of a cluster)")
        try:
            ipaddress.IPv4Address(addr)
        except ValueError:
            raise NetworkSetupError(f"the node's advertise address {addr!r} is not an IPv4 address: overlay "
                                    "networks need one (orch join/init --advertise-addr IP)") from None
        if self._dp is None:
            from overlay_net.manager import NetworkDataplane  # pyroute2: only once a task needs it

            self._dp = NetworkDataplane(self.prefix, addr)
            self._dp.probe = self.probe
        return self._dp, addr

    async def prepare(self, task: Task, tasks: Iterable[Task], networks: Mapping[str, Network],
                      tables: Mapping[str, Mapping[str, TableEntry]]) -> str:
        """Make `task`'s namespace and program its interfaces; its path."""
        async with self._lock:
            dp, addr = self._dataplane()
            for att in task.networks:
                n = networks.get(att.network_id)
                if n is None or n.allocation is None:
                    raise NetworkSetupError(f"network {att.network_id} is not known to this node yet")
            path = self.netns_path(task.id)
            name = task_netns_name(self.prefix, task.id)
            try:
                await asyncio.to_thread(_create_netns, name)
                state = desired(self.prefix, addr, tasks, networks, tables, self._local_netns())
                await dp.apply_container(path, state)
            except Exception as e:
                # Nothing half-made stays: a namespace left here would count as
                # ready and take this task's broken state into every later sync.
                await asyncio.to_thread(_remove_netns, name)
                raise NetworkSetupError(f"attaching to its networks failed: {e}") from e
            # The node's state changed: the next sync applies (and still knows
            # which addresses the last one made reachable).
            self._applied_at = float("-inf")
            # Its virtual IPs work from its first packet.
            await self._balance(dp, tasks, networks, tables, self._local_netns())
            if not is_ingress_sandbox(task):
                await self._serve_dns(task, networks, tables)
            return path

    async def sync(self, tasks: Iterable[Task], networks: Mapping[str, Network],
                   tables: Mapping[str, Mapping[str, TableEntry]], keep: set[str]) -> None:
        """Apply the whole desired state; namespaces of tasks not in `keep`
        (no longer assigned here, containers gone) are removed first."""
        async with self._lock:
            local = self._local_netns()
            stale = local - keep
            for tid in sorted(stale):
                await self._stop_dns(tid)
                await asyncio.to_thread(_remove_netns, task_netns_name(self.prefix, tid))
            if self._dp is None and not (local - stale):
                return  # nothing networked on this node yet
            tasks = list(tasks)
            self._update_dns(networks, tables)
            for t in tasks:  # a restarted daemon serves its tasks' namespaces again
                if t.id in local - stale and t.networks and not is_ingress_sandbox(t) \
                        and (self._resolver is None or t.id not in self._resolver.serving()):
                    await self._serve_dns(t, networks, tables)
            try:
                dp, addr = self._dataplane()
            except NetworkSetupError as e:
                log.warning("overlay networks: %s", e)
                return
            state = desired(self.prefix, addr, tasks, networks, tables, local - stale)
            wanted = balancers(self.prefix, tasks, networks, tables, local - stale)
            now = asyncio.get_running_loop().time()
            if stale or self._applied != state or now - self._applied_at >= REPAIR_EVERY:
                if self._applied is not None:
                    # Backends that leave go before their peer entries do: a
                    # connection balanced to an address with no neighbour
                    # entry would have its SYNs (and their retransmits, pinned
                    # by conntrack) dropped. New backends wait for theirs.
                    await self._write(dp, _only_backends(wanted, _addresses(self._applied)))
                done = await dp.apply(state)
                self._applied, self._applied_at = state, now
                if done:
                    log.debug("overlay networks: %d changes", len(done))
            await self._write(dp, wanted)

    async def _balance(self, dp: NetworkDataplane, tasks: Iterable[Task], networks: Mapping[str, Network],
                       tables: Mapping[str, Mapping[str, TableEntry]], ready: set[str]) -> None:
        await self._write(dp, balancers(self.prefix, tasks, networks, tables, ready))

    @staticmethod
    async def _write(dp: NetworkDataplane, wanted: dict[str, Balancer]) -> None:
        for p in await dp.balance(wanted):
            log.warning("load balancing: %s", p)

    async def release(self, task_id: str) -> None:
        async with self._lock:
            await self._stop_dns(task_id)
            await asyncio.to_thread(_remove_netns, task_netns_name(self.prefix, task_id))

    # -- embedded DNS (127.0.0.11 in each task's namespace) ---------------------------

    def _update_dns(self, networks: Mapping[str, Network],
                    tables: Mapping[str, Mapping[str, TableEntry]]) -> None:
        if self._resolver is None:
            return
        self._resolver.update(name_table(networks, tables))

    async def _serve_dns(self, task: Task, networks: Mapping[str, Network],
                         tables: Mapping[str, Mapping[str, TableEntry]]) -> None:
        """Answer names at 127.0.0.11 inside the task's namespace. A resolver
        that cannot start leaves the task running without names (logged)."""
        from overlay_net.dns import Resolver  # dnslib: only on nodes with networked tasks

        try:
            if self._resolver is None:
                self._resolver = Resolver(probe=self.probe)
            self._update_dns(networks, tables)
            nets = [a.network_id for a in task.networks if not is_ingress(networks.get(a.network_id))]
            await self._resolver.serve(task.id, self.netns_path(task.id), nets)
        except Exception as e:
            log.warning("task %s: no embedded DNS: %s", task.id, e)

    async def _stop_dns(self, task_id: str) -> None:
        if self._resolver is not None:
            await self._resolver.stop_serving(task_id)  # before the namespace goes: sockets keep it alive

    async def teardown(self) -> None:
        """Remove every namespace, device and rule this node's networking made."""
        from overlay_net.manager import teardown

        async with self._lock:
            for tid in sorted(self._local_netns()):
                await self._stop_dns(tid)
                await asyncio.to_thread(_remove_netns, task_netns_name(self.prefix, tid))
            if self._dp is not None:
                await self._dp.teardown()
            else:
                await teardown(self.prefix)

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None
        if self._dp is not None:
            await self._dp.close()
            self._dp = None


def name_table(networks: Mapping[str, Network], tables: Mapping[str, Mapping[str, TableEntry]]) -> Any:
    """The resolver's names from the endpoint tables: per network, each
    serving task by its name and aliases, `tasks.SERVICE` (its serving
    tasks), and the service name: its virtual IP in vip mode, its serving
    tasks' addresses in dnsrr mode. The ingress network has no names."""
    from overlay_net.dns import EndpointMode, NameEndpoint, NameTable, ServiceName

    table = NameTable()
    for nid, n in networks.items():
        if is_ingress(n):
            continue
        table.set_network_name(nid, n.spec.name)
        services: dict[str, str] = {}
        for e in tables.get(nid, {}).values():
            try:
                aliases = e.aliases
                if e.service_name:
                    services.setdefault(e.service_name, e.vip)
                    if e.vip:
                        # As Swarm: a service's network aliases are names of the
                        # service, so in vip mode they answer its virtual IP.
                        for a in aliases:
                            services.setdefault(a, e.vip)
                        aliases = ()
                if e.serving:
                    table.add_endpoint(NameEndpoint(network_id=nid, task_id=e.task_id, address=e.address,
                                                    service_name=e.service_name, slot=e.slot, aliases=aliases))
            except ValueError as err:
                log.warning("endpoint %s on network %s has no usable name: %s", e.task_id, nid, err)
        for name, vip in services.items():
            try:
                table.set_service(ServiceName(network_id=nid, name=name,
                                              mode=EndpointMode.VIP if vip else EndpointMode.DNSRR,
                                              vip=_ip(vip) if vip else None))
            except ValueError as err:
                log.warning("service %s on network %s has no usable name: %s", name, nid, err)
    return table


def _create_netns(name: str) -> None:
    """A named network namespace with its loopback up (runc brings up `lo`
    only in namespaces it creates itself, not in one it joins)."""
    # Not pyroute2's NetNS: it forks the daemon, and the child's exit runs the
    # daemon's shutdown (it removed the socket). setns on this thread instead.
    from pyroute2 import IPRoute, netns

    from overlay_net.netlink import entered

    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        netns.create(name)
    with entered(path), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")
        if idx:
            ipr.link("set", index=idx[0], state="up")


def _remove_netns(name: str) -> None:
    from pyroute2 import netns

    if os.path.exists(os.path.join(NETNS_DIR, name)):
        try:
            netns.remove(name)
        except OSError as e:
            log.warning("removing network namespace %s: %s", name, e)
