"""Load balancing in the kernel with nftables: service virtual IPs inside
task namespaces, and published ports in the node's ingress sandbox.

This kernel has no IPVS, so (as kube-proxy's nftables mode) every balancer
is a NAT rule choosing a backend with `numgen random`:

* **Virtual IPs** (`vip_table`): in each task's namespace, connections the
  task opens to a service's VIP are DNATed, in the `output` hook, to one of
  the service's serving tasks (same port). A VIP with no serving task
  rejects at once (connection refused, not a timeout).
* **Routing mesh** (`ingress_table`): in the node's ingress sandbox,
  connections arriving for a published port are DNATed to one serving task
  of the service on the ingress network (its target port) and masqueraded
  behind the sandbox's ingress address, so replies come back through it.

Each namespace holds one table whose chains are flushed and refilled in one
transaction: a changed backend set never leaves a moment with an empty or
half-built rule set. NAT applies to a connection's first
packet only; conntrack keeps the chosen backend for the rest of it, so an
established connection is never moved to another task when the set
changes. Pure rendering here; `nftlib.run()` applies a script inside a
namespace.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address

PROTOCOLS = ("tcp", "udp")
# The output hook refuses the "dstnat" keyword in nft 1.0.6; it is -100.
_DSTNAT = "-100"


@dataclass(frozen=True)
class VirtualService:
    """One service's VIP on one network and its serving tasks' addresses."""

    vip: IPv4Address
    backends: tuple[IPv4Address, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "vip", IPv4Address(self.vip))
        object.__setattr__(self, "backends", tuple(sorted({IPv4Address(b) for b in self.backends})))


@dataclass(frozen=True)
class IngressPort:
    """A published port of the routing mesh: where the service's serving
    tasks are on the ingress network and which port they listen on."""

    protocol: str
    published: int
    backends: tuple[tuple[IPv4Address, int], ...] = ()

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if not 1 <= self.published <= 65535:
            raise ValueError(f"published port {self.published} is out of range 1..65535")
        backends = {(IPv4Address(ip), int(port)) for ip, port in self.backends}
        for ip, port in backends:
            if not 1 <= port <= 65535:
                raise ValueError(f"backend {ip}:{port}: port out of range 1..65535")
        object.__setattr__(self, "backends", tuple(sorted(backends)))


def _dnat_map(targets: list[str]) -> str:
    return "numgen random mod {} map {{ {} }}".format(
        len(targets), ", ".join(f"{i} : {t}" for i, t in enumerate(targets)))


@dataclass(frozen=True)
class Balancer:
    """What one namespace's table must do: balance `vips` (a task's
    namespace), or `ports` arriving on anything but `ingress_ifname` (the
    node's ingress sandbox; its connections leave masqueraded through that
    interface)."""

    vips: tuple[VirtualService, ...] = ()
    ports: tuple[IngressPort, ...] = ()
    ingress_ifname: str = ""

    def __post_init__(self) -> None:
        vips = {v.vip: v for v in self.vips}
        object.__setattr__(self, "vips", tuple(sorted(vips.values(), key=lambda v: v.vip)))
        ports = {(p.protocol, p.published): p for p in self.ports}
        object.__setattr__(self, "ports", tuple(ports[k] for k in sorted(ports)))
        if self.ports and not self.ingress_ifname:
            raise ValueError("published ports need the ingress interface's name")

    @property
    def kind(self) -> str:
        return "ingress" if self.ingress_ifname else "vip"


# Base chains per kind: (name, declaration). They are declared only when
# the table is first written: re-declaring an existing base chain, like
# deleting rules, makes the kernel wait for an RCU grace period (~14 ms on
# the development VM), so later writes only flush and refill chains.
_CHAINS = {
    "vip": (("output", f"type nat hook output priority {_DSTNAT}; policy accept;"),
            ("vip_reject", "type filter hook output priority filter; policy accept;")),
    "ingress": (("prerouting", "type nat hook prerouting priority dstnat; policy accept;"),
                ("postrouting", "type nat hook postrouting priority srcnat; policy accept;"),
                ("port_reject", "type filter hook input priority filter; policy accept;")),
}


def rules(b: Balancer) -> list[tuple[str, str]]:
    """The table's rules, as (chain, rule), in order."""
    out: list[tuple[str, str]] = []
    if b.kind == "vip":
        empty = []
        for v in b.vips:
            if v.backends:
                out.append(("output", f"ip daddr {v.vip} dnat to {_dnat_map([str(x) for x in v.backends])}"))
            else:
                empty.append(str(v.vip))
        if empty:
            out.append(("vip_reject", f"ip daddr {{ {', '.join(empty)} }} reject"))
        return out
    empty = []
    for p in b.ports:
        if p.backends:
            targets = [f"{ip} . {port}" for ip, port in p.backends]
            out.append(("prerouting", f'iifname != "{b.ingress_ifname}" meta l4proto {p.protocol} '
                                      f"th dport {p.published} dnat ip to {_dnat_map(targets)}"))
        else:
            empty.append(f"{p.protocol} . {p.published}")
    if empty:
        out.append(("port_reject", f'iifname != "{b.ingress_ifname}" meta l4proto . th dport '
                                   f"{{ {', '.join(empty)} }} reject"))
    out.append(("postrouting", f'oifname "{b.ingress_ifname}" masquerade'))
    return out


def script(table: str, b: Balancer, *, declare: bool) -> str:
    """One nft transaction that makes the table's chains hold exactly the
    balancer's rules. declare: also create the table and its base chains
    (first write, or the table may be missing)."""
    lines = []
    chains = _CHAINS[b.kind]
    if declare:
        lines.append(f"table ip {table} {{")
        lines.extend(f"  chain {name} {{ {decl} }}" for name, decl in chains)
        lines.append("}")
    lines.extend(f"flush chain ip {table} {name}" for name, _ in chains)
    lines.extend(f"add rule ip {table} {chain} {rule}" for chain, rule in rules(b))
    return "\n".join(lines) + "\n"


def fingerprint(b: Balancer) -> str:
    text = b.kind + "\n" + "\n".join(f"{c} {r}" for c, r in rules(b))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TableCache:
    """What was last written to each namespace, so unchanged tables are not
    written again, and where the table and its chains exist. Empty after a
    restart: the first sync writes every table again, declaring its chains
    (idempotent: the same content)."""

    written: dict[str, str] = field(default_factory=dict)  # netns path -> fingerprint
    declared: set[str] = field(default_factory=set)  # netns paths whose table exists

    def changed(self, wanted: dict[str, Balancer]) -> dict[str, Balancer]:
        """The balancers (by netns) that differ from what was written."""
        return {ns: b for ns, b in wanted.items() if self.written.get(ns) != fingerprint(b)}

    def mark(self, netns: str, b: Balancer, *, declared: bool = True) -> None:
        self.written[netns] = fingerprint(b)
        if declared:
            self.declared.add(netns)

    def forget(self, netns: str) -> None:
        self.written.pop(netns, None)
        self.declared.discard(netns)
