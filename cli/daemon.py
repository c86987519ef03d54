"""`orch daemon`: run this host's node daemon (engine; manager when asked)."""

from __future__ import annotations

import asyncio
import logging

import click

from .output import fail


def _parse_cluster(spec: str) -> dict[int, str]:
    members: dict[int, str] = {}
    for i, part in enumerate(p for p in spec.split(",") if p.strip()):
        nid, sep, addr = part.strip().partition("=")
        if not sep or not nid.isdigit() or int(nid) < 1 or not addr:
            raise click.BadParameter(
                f"member {i + 1} ({part.strip()!r}): expected ID=HOST:PORT with ID >= 1",
                param_hint="--initial-cluster",
            )
        if int(nid) in members:
            raise click.BadParameter(f"node id {nid} listed twice", param_hint="--initial-cluster")
        members[int(nid)] = addr
    return members


@click.command()
@click.option("--data-dir", default="/var/lib/orch", show_default=True, help="State directory.")
@click.option("--node-id", type=click.IntRange(min=1), default=None, help="This manager's Raft id (managers only).")
@click.option("--listen-addr", default="0.0.0.0:4242", show_default=True, help="HOST:PORT for the control API and Raft peers.")
@click.option("--initial-cluster", default="", help="ID=HOST:PORT,... of the founding managers (first start only).")
@click.option("--manager", "as_manager", is_flag=True, help="Run the manager with no state yet, waiting for `orch cluster member add`.")
@click.option("--socket", "socket_path", default="/run/orch/orch.sock", show_default=True, help="Unix socket for the local CLI.")
@click.option("--tick-ms", type=click.IntRange(min=1), default=100, show_default=True, help="Raft tick interval.")
@click.option("--election-ticks", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--snapshot-every", type=click.IntRange(min=1), default=10_000, show_default=True, help="Snapshot after this many applied entries.")
@click.option("--keep-entries", type=click.IntRange(min=0), default=5_000, show_default=True, help="Entries kept after a snapshot for slow followers.")
@click.option("--insecure-registry", "insecure", multiple=True, help="Registry (host:port, host or CIDR) spoken to over plain http.")
@click.option("--registry-auth-file", type=click.Path(dir_okay=False), default=None, help="docker-style config.json with registry credentials.")
@click.option("--runtime", default="runc", show_default=True, help="OCI runtime binary (runc, crun, youki).")
@click.option("--cgroup-parent", default="orch", show_default=True, help="cgroup under which containers run.")
@click.option("--hostname", default=None, help="Name this node reports to the managers (default: the host name).")
@click.option("--heartbeat-period", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="Agent heartbeat period a manager of this node asks for (seconds).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def daemon(
    data_dir: str,
    node_id: int,
    listen_addr: str,
    initial_cluster: str,
    as_manager: bool,
    socket_path: str,
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
    log_level: str,
) -> None:
    """Run the orch daemon on this host."""
    import os

    from agent.node import NodeDaemon, NodeOptions
    from manager.dispatcher import DispatcherSettings
    from manager.process import ManagerOptions, parse_addr
    from manager.raft.driver import RaftSettings
    from manager.raft.snap import SnapshotError
    from manager.raft.wal import WALError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    members = _parse_cluster(initial_cluster)
    if members and node_id not in members:
        fail(f"--initial-cluster does not list this node's id {node_id}")
    try:
        parse_addr(listen_addr)
        for a in members.values():
            parse_addr(a)
    except ValueError as e:
        fail(str(e))
    settings = RaftSettings(
        tick_interval=tick_ms / 1000,
        election_tick=election_ticks,
        snapshot_every=snapshot_every,
        keep_entries=keep_entries,
    )
    mopts = None
    joined = os.path.exists(os.path.join(data_dir, "cluster", "state.json"))  # init/join made it
    if members or as_manager or (not joined and os.path.isdir(os.path.join(data_dir, "manager", "raft"))):
        if node_id is None:
            fail("--node-id is required for a manager (with --initial-cluster or an existing manager state)")
        mopts = ManagerOptions(
            node_id=node_id,
            data_dir=os.path.join(data_dir, "manager"),
            listen_addr=listen_addr,
            initial_cluster=members,
            settings=settings,
        )
    opts = NodeOptions(
        data_dir=data_dir,
        socket_path=socket_path or None,
        insecure_registries=insecure,
        registry_auth_file=registry_auth_file,
        manager=mopts,
        runtime=runtime,
        cgroup_parent=cgroup_parent,
        hostname=hostname,
        raft_settings=settings,
        dispatcher=DispatcherSettings(period=heartbeat_period),
    )
    import gc

    # The daemon's heap is mostly long-lived store objects; collecting young
    # garbage less often removes most of the collector's pauses under load.
    gc.set_threshold(50_000, 20, 100)
    try:
        # uvloop (faster Raft and HTTP) unless ORCH_EVENT_LOOP=asyncio; the
        # engine spawns its children from threads, so the loop does not matter there.
        try:
            if os.environ.get("ORCH_EVENT_LOOP") == "asyncio":
                raise ImportError
            import uvloop
        except ImportError:
            asyncio.run(NodeDaemon(opts).run_forever())
        else:
            uvloop.run(NodeDaemon(opts).run_forever())
    except (OSError, WALError, SnapshotError) as e:
        # Damaged state is never repaired silently: say what and where, stop.
        fail(f"daemon: {e}")
