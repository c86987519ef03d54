"""Cluster membership and nodes: `orch init/join/leave/join-token` and
`orch node ls/inspect/update/promote/demote/rm` (as `docker swarm/node`)."""

from __future__ import annotations

import time
from typing import Any

import click

from .client import APIError, Endpoint, request
from .output import FORMAT_OPTION, fail, print_json, print_table


@click.command("init")
@click.option("--advertise-addr", help="HOST[:PORT] other nodes use to reach this manager.")
@click.option("--listen-addr", default="0.0.0.0:4242", show_default=True, help="HOST:PORT to listen on.")
@click.option("--force-new-cluster", is_flag=True,
              help="On a manager of a cluster that lost quorum: keep the state, become its only manager.")
@click.option("--default-addr-pool", "addr_pools", multiple=True,
              help="CIDR that networks without --subnet get subnets from (repeatable; default 10.0.0.0/8).")
@click.option("--default-addr-pool-mask-len", "mask_len", type=int,
              help="Prefix length of those subnets (default 24).")
@click.pass_obj
def init(ep: Endpoint, advertise_addr: str | None, listen_addr: str, force_new_cluster: bool,
         addr_pools: tuple[str, ...], mask_len: int | None) -> None:
    """Make this node the first manager of a new cluster."""
    body: dict[str, object] = {"advertise_addr": advertise_addr, "listen_addr": listen_addr,
                               "force_new_cluster": force_new_cluster}
    if addr_pools or mask_len is not None:
        pool: dict[str, object] = {}
        if addr_pools:
            pool["pools"] = list(addr_pools)
        if mask_len is not None:
            pool["subnet_size"] = mask_len
        body["default_addr_pool"] = pool
    res = request(ep, "POST", "/v1/swarm/init", body, timeout=60)
    if force_new_cluster:
        click.echo(f"This node ({res['node_id']}) is now the only manager of its cluster; the state was kept. "
                   "Join or promote managers again to restore fault tolerance.")
        return
    click.echo(f"Cluster initialized: this node ({res['node_id']}) is now a manager at {res['advertise_addr']}.")
    click.echo("\nTo add a worker to this cluster, run on it:\n")
    click.echo(f"    orch join --token {res['join_tokens']['worker']} {res['advertise_addr']}\n")
    click.echo("To add a manager, run `orch join-token manager` and follow the instructions.")


@click.command("join")
@click.option("--token", required=True, help="Join token from `orch join-token`.")
@click.option("--advertise-addr", help="HOST[:PORT] others use to reach this node (default: the address "
                                       "of the interface that routes to the manager).")
@click.option("--listen-addr", default="0.0.0.0:4242", show_default=True, help="HOST:PORT (managers listen here).")
@click.argument("remote")
@click.pass_obj
def join(ep: Endpoint, token: str, advertise_addr: str | None, listen_addr: str, remote: str) -> None:
    """Join the cluster of the manager at REMOTE (HOST[:PORT])."""
    res = request(ep, "POST", "/v1/swarm/join", {"token": token, "remote": remote, "listen_addr": listen_addr,
                                                  "advertise_addr": advertise_addr}, timeout=90)
    click.echo(f"This node joined the cluster as a {res['role']} (node id {res['node_id']}).")


@click.command("leave")
@click.option("-f", "--force", is_flag=True, help="Leave even as a manager (may cost the cluster its quorum).")
@click.pass_obj
def leave(ep: Endpoint, force: bool) -> None:
    """Make this node leave its cluster."""
    request(ep, "POST", "/v1/swarm/leave", {"force": force}, timeout=60)
    click.echo("Node left the cluster.")


@click.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("--rotate", is_flag=True, help="Invalidate the current token and make a new one.")
@click.option("-q", "--quiet", is_flag=True, help="Print the token only.")
@click.pass_obj
def join_token(ep: Endpoint, role: str, rotate: bool, quiet: bool) -> None:
    """Show (or rotate) the token that joins a worker or a manager."""
    if rotate:
        toks = request(ep, "POST", f"/v1/join-tokens/rotate?role={role}", {})
    else:
        toks = request(ep, "GET", "/v1/join-tokens")
    if quiet:
        click.echo(toks[role])
        return
    if rotate:
        click.echo(f"Rotated the {role} join token.\n")
    addr = _manager_addr(ep)
    click.echo(f"To add a {role} to this cluster, run on it:\n\n    orch join --token {toks[role]} {addr}\n")


def _manager_addr(ep: Endpoint) -> str:
    try:
        st = request(ep, "GET", "/v1/info")
        return st["cluster"]["advertise_addr"]
    except Exception:
        return "MANAGER-HOST:4242"


# -- nodes -------------------------------------------------------------------


@click.group()
def node() -> None:
    """Manage the cluster's nodes (on a manager)."""


def _manager_col(n: dict[str, Any]) -> str:
    ms = n.get("manager_status")
    if not ms:
        return ""
    if ms.get("leader"):
        return "Leader"
    if ms.get("suffrage") == "learner":
        return "Joining"
    return "Reachable" if ms.get("reachable") else "Unreachable"


@node.command("ls")
@FORMAT_OPTION
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def node_ls(ep: Endpoint, fmt: str, quiet: bool) -> None:
    """List nodes."""
    nodes = request(ep, "GET", "/v1/nodes")
    if fmt == "json":
        print_json(nodes)
        return
    if quiet:
        for n in nodes:
            click.echo(n["id"])
        return
    me = ""
    try:
        me = (request(ep, "GET", "/v1/info").get("cluster") or {}).get("node_id", "")
    except Exception:
        pass
    print_table(sorted(nodes, key=lambda n: (n["description"]["hostname"], n["id"])), [
        ("ID", lambda n: n["id"] + (" *" if n["id"] == me else "")),
        ("HOSTNAME", lambda n: n["description"]["hostname"]),
        ("STATUS", lambda n: n["status"]["state"].capitalize()),
        ("AVAILABILITY", lambda n: n["spec"]["availability"].capitalize()),
        ("MANAGER STATUS", _manager_col),
        ("ROLE", lambda n: n["role"]),
    ])


@node.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def node_inspect(ep: Endpoint, refs: tuple[str, ...]) -> None:
    """Show nodes in detail."""
    print_json([request(ep, "GET", f"/v1/nodes/{r}") for r in refs])


@node.command("update")
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]))
@click.option("--label-add", multiple=True, help="KEY=VALUE (or KEY)")
@click.option("--label-rm", multiple=True, help="KEY")
@click.argument("ref")
@click.pass_obj
def node_update(ep: Endpoint, availability: str | None, label_add: tuple[str, ...], label_rm: tuple[str, ...],
                ref: str) -> None:
    """Change a node's availability or labels."""
    body: dict[str, Any] = {"label_add": list(label_add), "label_rm": list(label_rm)}
    if availability:
        body["availability"] = availability
    n = request(ep, "POST", f"/v1/nodes/{ref}/update", body)
    click.echo(n["id"])


def _set_role(ep: Endpoint, refs: tuple[str, ...], role: str, force: bool, wait: float) -> None:
    for r in refs:
        n = request(ep, "POST", f"/v1/nodes/{r}/update", {"role": role, "force": force})
        deadline = time.monotonic() + wait
        while n["role"] != role:
            if time.monotonic() > deadline:
                fail(f"node {n['id']}: the role change to {role} is requested but not done after {wait:.0f} s "
                     "(is the node up?)")
            time.sleep(0.2)
            try:
                n = request(ep, "GET", f"/v1/nodes/{n['id']}")
            except APIError as e:
                if role == "worker" and e.status == 503:
                    # We demoted the manager we were talking to: it no longer answers node commands.
                    click.echo(f"Node {n['id']} is now a worker (this node is no longer a manager).")
                    return
                raise
        click.echo(f"Node {n['id']} is now a {role}.")


@node.command("promote")
@click.argument("refs", nargs=-1, required=True)
@click.option("--wait", type=float, default=60.0, show_default=True, help="Seconds to wait for the change.")
@click.pass_obj
def node_promote(ep: Endpoint, refs: tuple[str, ...], wait: float) -> None:
    """Make workers managers."""
    _set_role(ep, refs, "manager", False, wait)


@node.command("demote")
@click.argument("refs", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Demote even if that loses quorum.")
@click.option("--wait", type=float, default=60.0, show_default=True)
@click.pass_obj
def node_demote(ep: Endpoint, refs: tuple[str, ...], force: bool, wait: float) -> None:
    """Make managers workers."""
    _set_role(ep, refs, "worker", force, wait)


@node.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove a node that still looks up.")
@click.pass_obj
def node_rm(ep: Endpoint, refs: tuple[str, ...], force: bool) -> None:
    """Remove nodes from the cluster (their certificates are refused from now on)."""
    for r in refs:
        res = request(ep, "DELETE", f"/v1/nodes/{r}" + ("?force=1" if force else ""))
        click.echo(res["id"])


COMMANDS: list[click.Command] = [init, join, leave, join_token, node]
