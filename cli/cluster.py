"""`orch cluster ...`: the state of the manager Raft group."""

from __future__ import annotations

import click

from .client import Endpoint, request
from .output import FORMAT_OPTION, print_json, print_table


@click.group()
def cluster() -> None:
    """Inspect the cluster."""


@cluster.command("status")
@FORMAT_OPTION
@click.pass_obj
def status(ep: Endpoint, fmt: str) -> None:
    """Members, leader, term, commit and applied index."""
    st = request(ep, "GET", "/v1/cluster/status")
    if fmt == "json":
        print_json(st)
        return
    raft = st["raft"]
    click.echo(
        f"node {raft['id']} ({raft['role']})  leader: {raft['leader'] or '-'}  term: {raft['term']}  "
        f"commit: {raft['commit']}  applied: {raft['applied']}"
    )
    print_table(
        raft["members"],
        [
            ("ID", lambda m: m["id"]),
            ("ADDRESS", lambda m: m["addr"]),
            ("SUFFRAGE", lambda m: m["suffrage"]),
            ("LEADER", lambda m: "*" if m["leader"] else ""),
            ("REACHABLE", lambda m: "yes" if m["reachable"] else "no"),
            ("MATCH", lambda m: m.get("match", "")),
        ],
    )


@cluster.group("member")
def member() -> None:
    """Add or remove managers (Raft members)."""


@member.command("add")
@click.argument("node_id", type=click.IntRange(min=1))
@click.argument("addr")
@click.pass_obj
def member_add(ep: Endpoint, node_id: int, addr: str) -> None:
    """Add manager NODE_ID at ADDR (HOST:PORT) as a learner, then a voter once caught up.

    Run it against the leader. Start the new manager first with
    `orch daemon --manager --node-id NODE_ID --listen-addr ADDR`.
    """
    request(ep, "POST", "/v1/cluster/members", {"id": node_id, "addr": addr}, timeout=60)
    click.echo(f"node {node_id} is a voter")


@member.command("rm")
@click.argument("node_id", type=click.IntRange(min=1))
@click.pass_obj
def member_rm(ep: Endpoint, node_id: int) -> None:
    """Remove manager NODE_ID (run it against the leader)."""
    request(ep, "DELETE", f"/v1/cluster/members/{node_id}")
    click.echo(f"node {node_id} removed")
