"""From `orch daemon`'s flags to NodeOptions.

Decides whether this node starts a static manager (founding members given
by `--initial-cluster`, `--manager`, or a manager's state left on disk by
an earlier static start) and builds its options; every other node gets the
manager settings as plain values, and the manager is imported only if the
node becomes one. Every problem is an OptionsError naming the flag.
"""

from __future__ import annotations

import os

from pki.tls import parse_addr

from .node import NodeOptions
from .settings import ManagerSettings, SettingsError

# Settings fields -> the flags that set them, so errors name what the user typed.
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
}


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
            manager_settings=settings,
        )
    except SettingsError as e:
        flag = FLAGS.get(e.field.partition("[")[0])
        raise OptionsError(e.problem if flag else str(e), flag) from None
