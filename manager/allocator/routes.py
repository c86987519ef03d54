"""The host's IPv4 routes, to refuse a user's subnet that would shadow them.

A network whose subnet overlaps a route of the host (the underlay, a LAN the
node reaches) would make that destination unreachable from its containers:
the overlay's on-link route wins inside them. Subnets from the cluster's pool
are the operator's choice and are not checked here.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Network

__all__ = ["Route", "host_routes", "overlapping_route"]


@dataclass(frozen=True)
class Route:
    dest: IPv4Network
    dev: str

    def __str__(self) -> str:
        return f"{self.dest} dev {self.dev}"


def host_routes(path: str = "/proc/net/route") -> list[Route]:
    """The main table's IPv4 routes other than the default route."""
    out: list[Route] = []
    try:
        with open(path) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) < 8:
                    continue
                dest = socket.inet_ntoa(struct.pack("<I", int(cols[1], 16)))
                mask = socket.inet_ntoa(struct.pack("<I", int(cols[7], 16)))
                net = IPv4Network(f"{dest}/{mask}", strict=False)
                if net.prefixlen == 0:
                    continue
                out.append(Route(net, cols[0]))
    except OSError:
        return []
    return out


def overlapping_route(subnet: IPv4Network, routes: list[Route]) -> Route | None:
    for r in routes:
        if subnet.overlaps(r.dest):
            return r
    return None
