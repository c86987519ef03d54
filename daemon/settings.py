"""Settings of the node daemon that are plain values, checked when made.

`check_node_options` checks NodeOptions (daemon.node) field by field.

`ManagerSettings` says how a manager on this node runs once there is one
(made by `orch init`, `orch join` with a manager token, or a promotion).
It holds plain numbers rather than the manager's own settings classes so
that a node that stays a worker never imports the manager; those classes
are built from it when a manager starts.

`SettingsError` is what every settings check raises: the field and what is
wrong with it (as etcd-io/raft's `Config.validate`).
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from overlay_net.model import StateError, check_prefix

if TYPE_CHECKING:
    from manager.dispatcher import DispatcherSettings
    from manager.raft.driver import RaftSettings

    from .node import NodeOptions

# sun_path of struct sockaddr_un is 108 bytes, one of them the final NUL.
MAX_SOCKET_PATH = 107


class SettingsError(ValueError):
    """A settings field with a bad value; `field` names it (with an index
    for list items, e.g. `insecure_registries[1]`), `problem` says what is
    wrong and what would be right."""

    def __init__(self, owner: str, field: str, problem: str) -> None:
        super().__init__(f"{owner}.{field}: {problem}")
        self.owner = owner
        self.field = field
        self.problem = problem


def check_number(owner: str, name: str, value: Any, *, minimum: float, integer: bool, unit: str = "") -> None:
    """`value` is a finite number (an int if `integer`; never a bool) >= `minimum`."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise SettingsError(owner, name, f"must be {kind}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < minimum:
        at_least = f"{minimum:g}{' ' + unit if unit else ''}"
        raise SettingsError(owner, name, f"must be at least {at_least}, got {value!r}")


@dataclass(frozen=True)
class ManagerSettings:
    """How a manager started by this daemon runs. None leaves a field at the
    manager's own default (RaftSettings, DispatcherSettings)."""

    # Seconds per Raft tick, the unit of every Raft timeout (default 0.1).
    tick_interval: float | None = None
    # Ticks without hearing from a leader before a follower stands for
    # election; at least 2, since the leader's heartbeat is 1 tick (default 10).
    election_tick: int | None = None
    # Applied entries between two snapshots of the store; at least 1 (default 10,000).
    snapshot_every: int | None = None
    # Entries kept in the log after a snapshot, so a follower that lags by
    # fewer catches up without a snapshot; 0 or more (default 5,000).
    keep_entries: int | None = None
    # Seconds between the heartbeats the dispatcher asks agents for; a node
    # is DOWN after a few periods without one; at least 0.05 (default 5.0).
    heartbeat_period: float | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name, minimum, integer, unit in (
            ("tick_interval", 1e-3, False, "s"),
            ("election_tick", 2, True, "ticks"),
            ("snapshot_every", 1, True, "entries"),
            ("keep_entries", 0, True, "entries"),
            ("heartbeat_period", 0.05, False, "s"),
        ):
            value = getattr(self, name)
            if value is not None:
                check_number(owner, name, value, minimum=minimum, integer=integer, unit=unit)

    def raft_settings(self) -> RaftSettings:
        from manager.raft.driver import RaftSettings  # only once this node runs a manager

        names = ("tick_interval", "election_tick", "snapshot_every", "keep_entries")
        return RaftSettings(**{n: getattr(self, n) for n in names if getattr(self, n) is not None})

    def dispatcher_settings(self) -> DispatcherSettings:
        from manager.dispatcher import DispatcherSettings  # only once this node runs a manager

        if self.heartbeat_period is None:
            return DispatcherSettings()
        return DispatcherSettings(period=self.heartbeat_period)


def check_metrics_addr(addr: Any) -> tuple[str, int]:
    """The (host, port) of NodeOptions.metrics_addr, "HOST:PORT" (an empty
    host, ":9323", listens on every address)."""
    problem = f"must be HOST:PORT, e.g. 127.0.0.1:9323, got {addr!r}"
    if not isinstance(addr, str):
        raise SettingsError("NodeOptions", "metrics_addr", problem)
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in addr):
        raise SettingsError("NodeOptions", "metrics_addr", problem)
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not all(part and part.replace("-", "").isalnum() for part in host.split(".")):
                raise SettingsError("NodeOptions", "metrics_addr",
                                    f"{host!r} is neither an IP address nor a host name ({problem})") from None
    return host or "0.0.0.0", int(port)


def check_node_options(opts: NodeOptions) -> None:
    """Raise SettingsError for the first NodeOptions field with a bad value."""

    def bad(name: str, problem: str) -> SettingsError:
        return SettingsError("NodeOptions", name, problem)

    def path(name: str, value: Any, optional: bool) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            raise bad(name, f"must be a non-empty path, got {value!r}")
        if "\0" in value:
            raise bad(name, f"contains a NUL byte: {value!r}")

    path("data_dir", opts.data_dir, optional=False)
    path("socket_path", opts.socket_path, optional=True)
    if opts.socket_path is not None and len(os.fsencode(opts.socket_path)) > MAX_SOCKET_PATH:
        raise bad("socket_path", f"the path is {len(os.fsencode(opts.socket_path))} bytes long; a unix socket "
                                 f"path has at most {MAX_SOCKET_PATH}: choose a shorter path")
    path("registry_auth_file", opts.registry_auth_file, optional=True)
    if isinstance(opts.insecure_registries, str) or not isinstance(opts.insecure_registries, (tuple, list)):
        raise bad("insecure_registries", f"must be a tuple of strings, got {opts.insecure_registries!r}")
    for i, entry in enumerate(opts.insecure_registries):
        name = f"insecure_registries[{i}]"
        if not isinstance(entry, str) or not entry or any(c.isspace() for c in entry):
            raise bad(name, f"must be host:port, host or a CIDR, got {entry!r}")
        if "://" in entry:
            raise bad(name, f"{entry!r}: give host:port without a scheme (insecure registries are spoken to over http)")
        if "/" in entry:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise bad(name, f"{entry!r} is not a CIDR (an entry with '/' must be one, e.g. 10.0.0.0/8)") from None
    if not isinstance(opts.runtime, str) or not opts.runtime.strip() or any(c.isspace() for c in opts.runtime):
        raise bad("runtime", f"must be the name or path of an OCI runtime binary, got {opts.runtime!r}")
    parent = opts.cgroup_parent.strip("/") if isinstance(opts.cgroup_parent, str) else ""
    if not parent or "\0" in parent or any(p in (".", "..") for p in parent.split("/")):
        raise bad("cgroup_parent", f"must be a cgroup path below the root without '.' or '..', "
                                   f"got {opts.cgroup_parent!r}")
    if opts.hostname is not None and (
            not isinstance(opts.hostname, str) or not 0 < len(opts.hostname) <= 253
            or not opts.hostname.isprintable() or any(c.isspace() for c in opts.hostname)):
        raise bad("hostname", f"must be 1 to 253 printable characters without spaces, got {opts.hostname!r}")
    try:
        check_prefix(opts.network_prefix)
    except StateError as e:
        raise bad("network_prefix", e.problems[0].message) from None
    if opts.metrics_addr is not None:
        check_metrics_addr(opts.metrics_addr)
    if opts.manager_settings is not None and not isinstance(opts.manager_settings, ManagerSettings):
        raise bad("manager_settings", f"must be a ManagerSettings, got {type(opts.manager_settings).__name__}")
    if not isinstance(opts.extra, dict):
        raise bad("extra", f"must be a dict, got {type(opts.extra).__name__}")
