"""`orch daemon`: run this host's node daemon (engine; manager when asked).

Only the command and its flags; `daemon.options` makes the options and
`daemon.main` runs them.
"""

from __future__ import annotations

import logging

import click

from .output import fail


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
@click.option("--network-prefix", default="orch-", show_default=True,
              help="Prefix of the network namespaces and nftables table overlay networking makes.")
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
    network_prefix: str,
    heartbeat_period: float,
    log_level: str,
) -> None:
    """Run the orch daemon on this host."""
    # Imported here: every other command of the CLI runs without the daemon's code.
    from daemon.main import DaemonError, run
    from daemon.options import OptionsError, build_options

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        opts = build_options(
            data_dir=data_dir, node_id=node_id, listen_addr=listen_addr, initial_cluster=initial_cluster,
            as_manager=as_manager, socket_path=socket_path, tick_ms=tick_ms, election_ticks=election_ticks,
            snapshot_every=snapshot_every, keep_entries=keep_entries, insecure=insecure,
            registry_auth_file=registry_auth_file, runtime=runtime, cgroup_parent=cgroup_parent,
            hostname=hostname, heartbeat_period=heartbeat_period, network_prefix=network_prefix,
        )
    except OptionsError as e:
        if e.param:
            raise click.BadParameter(str(e), param_hint=e.param) from None
        fail(str(e))
    try:
        run(opts)
    except DaemonError as e:
        fail(f"daemon: {e}")
