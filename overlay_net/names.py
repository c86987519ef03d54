"""Every name and ownership tag the dataplane of one node puts in the kernel.

Kept in one place so that creating, observing (adoption after a restart) and
tearing down agree. The scheme, for a node prefix P (e.g. "orch-"):

    named netns  P + "ov-" + <network id>    one sandbox per network
      in it      br0 (bridge, gateway address), vxlan0 (VXLAN, created from
                 the host namespace so its UDP socket lives on the underlay),
                 "ve" + 10 hex of the endpoint id's hash: one veth per endpoint
    host netns   L + "gw"                    the egress bridge
                 L + "e" + 8 hex of the container netns path's hash: the host
                 end of a container's egress veth
    container    the endpoint's ifname (eth0...), the egress ifname (next ethN)
    nftables     table ip P + "net"          masquerade (later VIPs, ports)

Link names are limited to 15 characters, so host-namespace links use a short
link prefix L: P itself when it is at most 6 characters ("orch-" gives
"orch-gw"), else "o" + 4 hex of P's hash (tests' long per-host prefixes).
Ownership is not inferred from names alone: every link the dataplane makes
carries an alias (IFLA_IFALIAS) "orch:" + P + ":" + kind + ":" + details,
which is what observation and teardown match on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SANDBOX_BRIDGE = "br0"
SANDBOX_VXLAN = "vxlan0"
TAG = "orch"
NETNS_DIR = "/run/netns"


def _hex(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Naming:
    prefix: str

    # -- namespaces -------------------------------------------------------------

    @property
    def sandbox_ns_prefix(self) -> str:
        return f"{self.prefix}ov-"

    def sandbox_ns(self, network_id: str) -> str:
        return f"{self.sandbox_ns_prefix}{network_id}"

    def sandbox_path(self, network_id: str) -> str:
        return f"{NETNS_DIR}/{self.sandbox_ns(network_id)}"

    def network_of_ns(self, ns_name: str) -> str | None:
        """The network id of a sandbox namespace name, None if not ours."""
        if ns_name.startswith(self.sandbox_ns_prefix) and len(ns_name) > len(self.sandbox_ns_prefix):
            return ns_name[len(self.sandbox_ns_prefix):]
        return None

    # -- links ------------------------------------------------------------------

    @property
    def link_prefix(self) -> str:
        return self.prefix if len(self.prefix) <= 6 else "o" + _hex(self.prefix, 4)

    @property
    def egress_bridge(self) -> str:
        return f"{self.link_prefix}gw"

    def egress_host_if(self, netns: str) -> str:
        return f"{self.link_prefix}e{_hex(netns, 8)}"

    def is_egress_host_if(self, ifname: str) -> bool:
        lp = self.link_prefix + "e"
        rest = ifname[len(lp):]
        return ifname.startswith(lp) and len(rest) == 8 and all(c in "0123456789abcdef" for c in rest)

    @staticmethod
    def endpoint_if(endpoint_id: str) -> str:
        return f"ve{_hex(endpoint_id, 10)}"

    # -- ownership tags (link aliases) --------------------------------------------

    @property
    def tag(self) -> str:
        return f"{TAG}:{self.prefix}:"

    def network_tag(self, network_id: str) -> str:
        return f"{self.tag}net:{network_id}"

    def endpoint_tag(self, endpoint_id: str, netns: str) -> str:
        return f"{self.tag}ep:{endpoint_id}:{netns}"

    def parse_endpoint_tag(self, alias: str | None) -> tuple[str, str] | None:
        """(endpoint id, netns path) from an endpoint veth's alias."""
        head = f"{self.tag}ep:"
        if not alias or not alias.startswith(head):
            return None
        ep, sep, netns = alias[len(head):].partition(":")
        return (ep, netns) if sep and ep and netns else None

    @property
    def egress_bridge_tag(self) -> str:
        return f"{self.tag}gw"

    def egress_tag(self, netns: str) -> str:
        return f"{self.tag}eg:{netns}"

    def parse_egress_tag(self, alias: str | None) -> str | None:
        head = f"{self.tag}eg:"
        if not alias or not alias.startswith(head) or len(alias) == len(head):
            return None
        return alias[len(head):]

    # -- nftables -------------------------------------------------------------------

    @property
    def nft_table(self) -> str:
        return f"{self.prefix}net"

    @property
    def lb_table(self) -> str:
        """The load-balancing table in each container namespace (lb.py)."""
        return f"{self.prefix}lb"
