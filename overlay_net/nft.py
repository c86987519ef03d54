"""The node's one nftables table, as text.

The dataplane owns exactly one table per node (`table ip <prefix>net`) and
always replaces it whole in one `nft -f -` transaction (create-if-missing,
delete, define), so the kernel never holds a half-written rule set. pyroute2's
nftables support is too thin to build NAT rules, hence the `nft` binary.

Observation does not parse rules back: the table carries a comment with a
fingerprint of the text it was made from, and a table whose fingerprint
differs from the desired one is replaced.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

COMMENT_HEAD = "orch overlay_net "
_COMMENT_RE = re.compile(r'^\s*comment\s+"([^"]*)"\s*$', re.M)


def render_body(egress_bridge: str, egress_subnet: IPv4Network,
                forwards: Sequence[tuple[str, int, IPv4Address, int]] = ()) -> str:
    """The chains of the table. Traffic of containers leaving the node
    through anything but the egress bridge itself is masqueraded behind the
    outgoing interface's address. forwards: published ports as (protocol,
    port, container egress address, target port): connections to the port
    on any of the node's own addresses (from outside, and from the node
    itself except over loopback) are DNATed to the container."""
    body = (
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    ip saddr {egress_subnet} oifname != "{egress_bridge}" masquerade\n'
        "  }\n"
    )
    if not forwards:
        return body
    rules = [f"meta l4proto {proto} th dport {port} dnat ip to {addr}:{target}"
             for proto, port, addr, target in sorted(forwards)]
    pre = "".join(f"    fib daddr type local {r}\n" for r in rules)
    out = "".join(f"    ip daddr != 127.0.0.0/8 fib daddr type local {r}\n" for r in rules)
    return body + (
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"{pre}"
        "  }\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"{out}"
        "  }\n"
    )


def fingerprint(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def render_replace(table: str, body: str) -> str:
    """An nft script that atomically replaces `table` with body."""
    return (
        f"table ip {table} {{}}\n"
        f"delete table ip {table}\n"
        f"table ip {table} {{\n"
        f'  comment "{COMMENT_HEAD}{fingerprint(body)}"\n'
        f"{body}"
        "}\n"
    )


def render_delete(table: str) -> str:
    return f"table ip {table} {{}}\ndelete table ip {table}\n"


def parse_fingerprint(listing: str) -> str:
    """The fingerprint from `nft list table` output; "" if it has none of ours."""
    m = _COMMENT_RE.search(listing)
    if m is None or not m.group(1).startswith(COMMENT_HEAD):
        return ""
    return m.group(1)[len(COMMENT_HEAD):]
