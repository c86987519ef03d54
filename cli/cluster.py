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
