"""From `orch daemon`'s flags to NodeOptions.

Decides whether this node starts a static manager (founding members given
by `--initial-cluster`, `--manager`, or a manager's state left on disk by
an earlier static start) and builds its options; every other node gets the
manager settings as plain values, and the manager is imported only if the
node becomes one. Every problem is an OptionsError naming the flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pki.tls import parse_addr

from .node import NodeOptions
from .settings import ManagerSettings, SettingsError

@dataclass(frozen=True)
class Option:
    """One option of `orch daemon`: the one table both the command's flags
    (cli.daemon) and the keys of /etc/orch/daemon.yaml (daemon.config) are
    made from, so the two cannot drift apart."""

    # The flag without its dashes, which is also the daemon.yaml key ("data-dir").
    key: str
    # The keyword of build_options (or of the command alone, e.g. log_level).
    dest: str
    # str, int, float, bool (a flag), list (a repeatable flag; a YAML list of strings), choice.
    kind: str
    default: Any
    help: str
    # Lowest value an int or float takes.
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    # A path on the host (the flag checks nothing more than a string would).
    path: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key


OPTIONS: tuple[Option, ...] = (
    Option("data-dir", "data_dir", "str", "/var/lib/orch", "State directory.", path=True),
    Option("node-id", "node_id", "int", None, "This manager's Raft id (static managers only).", minimum=1),
    Option("listen-addr", "listen_addr", "str", "0.0.0.0:4242", "HOST:PORT for the control API and Raft peers."),
    Option("initial-cluster", "initial_cluster", "str", "",
           "ID=HOST:PORT,... of the founding managers (first start only)."),
    Option("manager", "as_manager", "bool", False,
           "Run the manager with no state yet, waiting for `orch cluster member add`."),
    Option("socket", "socket_path", "str", "/run/orch/orch.sock", "Unix socket for the local CLI.", path=True),
    Option("tick-ms", "tick_ms", "int", 100, "Raft tick interval (milliseconds).", minimum=1),
    Option("election-ticks", "election_ticks", "int", 10,
           "Ticks without a leader before a follower stands for election.", minimum=2),
    Option("snapshot-every", "snapshot_every", "int", 10_000, "Snapshot after this many applied entries.", minimum=1),
    Option("keep-entries", "keep_entries", "int", 5_000, "Entries kept after a snapshot for slow followers.",
           minimum=0),
    Option("insecure-registry", "insecure", "list", (),
           "Registry (host:port, host or CIDR) spoken to over plain http (repeatable)."),
    Option("registry-auth-file", "registry_auth_file", "str", None,
           "docker-style config.json with registry credentials.", path=True),
    Option("runtime", "runtime", "str", "runc", "OCI runtime binary (runc, crun, youki)."),
    Option("cgroup-parent", "cgroup_parent", "str", "orch", "cgroup under which containers run."),
    Option("hostname", "hostname", "str", None, "Name this node reports to the managers (default: the host name)."),
    Option("network-prefix", "network_prefix", "str", "orch-",
           "Prefix of the network namespaces and nftables table overlay networking makes."),
    Option("heartbeat-period", "heartbeat_period", "float", 5.0,
           "Agent heartbeat period a manager of this node asks for (seconds).", minimum=0.05),
    Option("metrics-addr", "metrics_addr", "str", None,
           "HOST:PORT to serve Prometheus metrics on (GET /metrics); default: none."),
    Option("log-level", "log_level", "choice", "info", "How much the daemon logs.",
           choices=("debug", "info", "warning", "error")),
)

BY_KEY = {o.key: o for o in OPTIONS}
BY_DEST = {o.dest: o for o in OPTIONS}

# Settings fields -> the options that set them, so errors name what the user typed.
FLAGS = {
    "data_dir": "--data-dir",
    "socket_path": "--socket",
    "insecure_registries": "--insecure-registry",
    "registry_auth_file": "--registry-auth-file",
    "runtime": "--runtime",
    "cgroup_parent": "--cgroup-parent",
    "hostname": "--hostname",
    "network_prefix": "--network-prefix",
    "tick_interval": "--tick-ms",
    "election_tick": "--election-ticks",
    "snapshot_every": "--snapshot-every",
    "keep_entries": "--keep-entries",
    "heartbeat_period": "--heartbeat-period",
    "metrics_addr": "--metrics-addr",
}


def defaults() -> dict[str, Any]:
    """Every option's default, by dest."""
    return {o.dest: o.default for o in OPTIONS}


def build_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """The keywords of build_options out of every option's value (by dest)."""
    kw = {o.dest: values.get(o.dest, o.default) for o in OPTIONS if o.dest != "log_level"}
    kw["insecure"] = tuple(kw["insecure"])
    return kw



class OptionsError(ValueError):
    """A flag (`param`, when one is to blame) or a combination of flags is wrong."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_initial_cluster(spec: str) -> dict[int, str]:
    """`ID=HOST:PORT,...` -> {id: address}."""
    members: dict[int, str] = {}
    for i, part in enumerate(p for p in spec.split(",") if p.strip()):
        nid, sep, addr = part.strip().partition("=")
        if not sep or not nid.isdigit() or int(nid) < 1 or not addr:
            raise OptionsError(f"member {i + 1} ({part.strip()!r}): expected ID=HOST:PORT with ID >= 1",
                               "--initial-cluster")
        if int(nid) in members:
            raise OptionsError(f"node id {nid} listed twice", "--initial-cluster")
        members[int(nid)] = addr
    return members


def build_options(
    *,
    data_dir: str,
    node_id: int | None,
    listen_addr: str,
    initial_cluster: str,
    as_manager: bool,
    socket_path: str | None,
    tick_ms: int,
    election_ticks: int,
    snapshot_every: int,
    keep_entries: int,
    insecure: tuple[str, ...],
    registry_auth_file: str | None,
    runtime: str,
    cgroup_parent: str,
    hostname: str | None,
    heartbeat_period: float,
    network_prefix: str = "orch-",
    metrics_addr: str | None = None,
) -> NodeOptions:
    members = parse_initial_cluster(initial_cluster)
    if members and node_id not in members:
        raise OptionsError(f"--initial-cluster does not list this node's id {node_id}")
    try:
        parse_addr(listen_addr)
        for a in members.values():
            parse_addr(a)
    except ValueError as e:
        raise OptionsError(str(e)) from None
    try:
        settings = ManagerSettings(
            tick_interval=tick_ms / 1000,
            election_tick=election_ticks,
            snapshot_every=snapshot_every,
            keep_entries=keep_entries,
            heartbeat_period=heartbeat_period,
        )
        mopts = None
        joined = os.path.exists(os.path.join(data_dir, "cluster", "state.json"))  # init/join made it
        if members or as_manager or (not joined and os.path.isdir(os.path.join(data_dir, "manager", "raft"))):
            if node_id is None:
                raise OptionsError(
                    "--node-id is required for a manager (with --initial-cluster or an existing manager state)")
            from manager.process import ManagerOptions  # this node is a manager from the start

            mopts = ManagerOptions(
                node_id=node_id,
                data_dir=os.path.join(data_dir, "manager"),
                listen_addr=listen_addr,
                initial_cluster=members,
                settings=settings.raft_settings(),
            )
        return NodeOptions(
            data_dir=data_dir,
            socket_path=socket_path or None,
            insecure_registries=insecure,
            registry_auth_file=registry_auth_file,
            manager=mopts,
            runtime=runtime,
            cgroup_parent=cgroup_parent,
            hostname=hostname,
            network_prefix=network_prefix,
            metrics_addr=metrics_addr or None,
            manager_settings=settings,
        )
    except SettingsError as e:
        flag = FLAGS.get(e.field.partition("[")[0])
        raise OptionsError(e.problem if flag else str(e), flag) from None
