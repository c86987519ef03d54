"""Published ports: which services hold which, and dynamic ones handed out.

Pure bookkeeping under the allocator (no store, no I/O). A service holds the
ports `api.objects.port_claims` says it does: ingress-mode ports are its
alone in the cluster, a host-mode port may be held by several services in
host mode (the scheduler keeps their tasks on different nodes). The store
enforces the same rule on every write (`manager.store.tables`); this table
lets the allocator pick a free port without asking it.

Dynamic ports come from DYNAMIC_PORT_MIN..DYNAMIC_PORT_MAX, next fit per
protocol (as the address pools: a port just given back is the last to come
again, so a client still aiming at the old service meets nothing rather than
a new one), and only ports nobody holds in any mode.
"""

from __future__ import annotations

from collections.abc import Iterable

from api.objects import DYNAMIC_PORT_MAX, DYNAMIC_PORT_MIN, PortProtocol, PublishMode, ports_clash

from .ipam import AllocationError

__all__ = ["Claim", "PublishedPorts"]

Claim = tuple[PortProtocol, int, PublishMode]
"""(protocol, published port, mode), as `api.objects.port_claims` gives them."""


class PublishedPorts:
    def __init__(self, lo: int = DYNAMIC_PORT_MIN, hi: int = DYNAMIC_PORT_MAX) -> None:
        self.lo = lo
        self.hi = hi
        self._holders: dict[tuple[PortProtocol, int], dict[str, PublishMode]] = {}
        self._held: dict[str, tuple[Claim, ...]] = {}  # service id -> what it holds
        self._next: dict[PortProtocol, int] = {}

    def hold(self, service_id: str, claims: Iterable[Claim]) -> None:
        """`service_id` holds exactly `claims` from now on (what it held
        before and does not claim any more is given back)."""
        claims = tuple(claims)
        if self._held.get(service_id, ()) == claims:
            return
        self.drop(service_id)
        if claims:
            self._held[service_id] = claims
        for proto, port, mode in claims:
            self._holders.setdefault((proto, port), {})[service_id] = mode

    def drop(self, service_id: str) -> None:
        for proto, port, _ in self._held.pop(service_id, ()):
            holders = self._holders.get((proto, port))
            if holders is not None:
                holders.pop(service_id, None)
                if not holders:
                    del self._holders[(proto, port)]

    def conflict(self, service_id: str, claim: Claim) -> str | None:
        """The id of another service whose hold keeps `service_id` from
        taking `claim` (None: it may)."""
        proto, port, mode = claim
        for sid, other in sorted(self._holders.get((proto, port), {}).items()):
            if sid != service_id and ports_clash(mode, other):
                return sid
        return None

    def allocate(self, proto: PortProtocol) -> int:
        """A port nobody holds; the caller holds it (`hold`) with its result."""
        size = self.hi - self.lo + 1
        start = self._next.get(proto, self.lo)
        for i in range(size):
            port = self.lo + (start - self.lo + i) % size
            if (proto, port) not in self._holders:
                self._next[proto] = port + 1 if port < self.hi else self.lo
                # Held at once (by nobody yet), so a second ask in the same
                # pass gets another port; `hold` replaces the placeholder.
                self._holders[(proto, port)] = {}
                return port
        raise AllocationError("endpoint_spec.ports", f"no free {proto} port left in {self.lo}-{self.hi}: "
                              "publish fixed ports or remove services that publish some")

    def unused(self, proto: PortProtocol, port: int) -> None:
        """Give back a port `allocate` returned that is not held after all."""
        if self._holders.get((proto, port)) == {}:
            del self._holders[(proto, port)]

    def held_by(self, service_id: str) -> tuple[Claim, ...]:
        return self._held.get(service_id, ())

    def in_use(self) -> int:
        return len(self._holders)
