"""`orch network ...`: overlay networks (as `docker network` on a Swarm
manager). Each network is a VXLAN segment spanning the nodes that run its
tasks; its subnet comes from `--subnet` or the cluster's address pool."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from .client import Endpoint, request
from .output import FORMAT_OPTION, fail, print_json, print_table


def _kv(items: tuple[str, ...], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not k or not sep:
            fail(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


@click.group(help="Manage overlay networks.")
def network() -> None:
    pass


@network.command("create")
@click.argument("name")
@click.option("-d", "--driver", default="overlay", show_default=True, help="Network driver (only overlay).")
@click.option("--subnet", default="", help="Subnet in CIDR form (default: one from the cluster's address pool).")
@click.option("--gateway", default="", help="Gateway address (default: the subnet's first address).")
@click.option("--ip-range", default="", help="Give task addresses from this part of the subnet only.")
@click.option("--attachable", is_flag=True, help="Let plain containers join (`orch container run --network`).")
@click.option("--internal", is_flag=True, help="No egress: containers get no route out of the cluster.")
@click.option("--ingress", is_flag=True,
              help="The routing mesh's network (published ports); one per cluster, made by `orch init`.")
@click.option("-o", "--opt", "opts", multiple=True, help="Driver option KEY=VALUE: mtu=N, vni=N (repeatable).")
@click.option("-l", "--label", "labels", multiple=True, help="KEY=VALUE label (repeatable).")
@FORMAT_OPTION
@click.pass_obj
def create(ep: Endpoint, name: str, driver: str, subnet: str, gateway: str, ip_range: str, attachable: bool,
           internal: bool, ingress: bool, opts: tuple[str, ...], labels: tuple[str, ...], fmt: str) -> None:
    """Create an overlay network NAME."""
    if (gateway or ip_range) and not subnet:
        fail("--gateway and --ip-range need --subnet")
    if ingress and attachable:
        fail("--ingress and --attachable exclude each other: plain containers do not take part in the routing mesh")
    spec: dict[str, Any] = {"name": name, "driver": driver, "attachable": attachable, "internal": internal,
                            "ingress": ingress, "options": _kv(opts, "--opt"), "labels": _kv(labels, "--label")}
    if subnet:
        spec["ipam"] = [{"subnet": subnet, "gateway": gateway, "ip_range": ip_range}]
    obj = request(ep, "POST", "/v1/networks", spec)
    if fmt == "json":
        print_json(obj)
    else:
        click.echo(obj["id"])


def _subnet(n: dict[str, Any]) -> str:
    al = n.get("allocation")
    if al:
        return str(al["subnet"])
    ipam = n["spec"].get("ipam") or []
    return str(ipam[0]["subnet"]) if ipam else "(allocating)"


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only IDs.")
@FORMAT_OPTION
@click.pass_obj
def ls(ep: Endpoint, quiet: bool, fmt: str) -> None:
    """List networks."""
    items = request(ep, "GET", "/v1/networks")
    if fmt == "json":
        print_json(items)
        return
    if quiet:
        for n in items:
            click.echo(n["id"])
        return
    flags = lambda n: ",".join(f for f in ("ingress", "attachable", "internal") if n["spec"].get(f)) or "-"  # noqa: E731
    print_table(sorted(items, key=lambda n: n["spec"]["name"]), [
        ("ID", lambda n: n["id"]), ("NAME", lambda n: n["spec"]["name"]),
        ("DRIVER", lambda n: n["spec"]["driver"]), ("SUBNET", _subnet),
        ("VNI", lambda n: (n.get("allocation") or {}).get("vni", "-")), ("FLAGS", flags),
        ("CREATED", lambda n: datetime.fromtimestamp(n["meta"]["created_at"], timezone.utc)
         .strftime("%Y-%m-%d %H:%M:%S")),
    ])


def pretty_network(n: dict[str, Any]) -> str:
    """`network inspect --pretty`: the network, its VIPs, and its endpoints per node."""
    spec = n["spec"]
    al = n.get("allocation") or {}
    flags = ",".join(f for f in ("ingress", "attachable", "internal") if spec.get(f)) or "-"
    lines = [f"ID:       {n['id']}", f"Name:     {spec['name']}", f"Subnet:   {_subnet(n)}",
             f"Gateway:  {al.get('gateway', '-')}", f"VNI:      {al.get('vni', '-')}", f"Flags:    {flags}"]
    vips = [e for e in n.get("endpoints") or [] if e["kind"] == "vip"]
    if vips:
        lines.append("Virtual IPs:")
        lines += [f"  {e['address']:<20}{e['service']}" for e in vips]
    groups = n.get("nodes") or []
    lines.append("Endpoints:" + ("" if groups else "  -"))
    for g in groups:
        lines.append(f"  node {g['node'] or '(not placed yet)'}" + (f" ({g['node_id'][:12]})" if g["node_id"] else ""))
        for e in g["endpoints"]:
            lines.append(f"    {e['address']:<20}{e['name']:<32}{e['kind']:<16}{e['state']}")
    return "\n".join(lines)


@network.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--pretty", is_flag=True, help="Human-readable, not JSON.")
@click.pass_obj
def inspect(ep: Endpoint, refs: tuple[str, ...], pretty: bool) -> None:
    """Show networks by ID, ID prefix or name, with their endpoints (per node under "nodes")."""
    items = [request(ep, "GET", f"/v1/networks/{r}") for r in refs]
    if pretty:
        click.echo("\n\n".join(pretty_network(n) for n in items))
    else:
        print_json(items)


@network.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def rm(ep: Endpoint, refs: tuple[str, ...]) -> None:
    """Remove networks (refused while a service or container uses them)."""
    for r in refs:
        request(ep, "DELETE", f"/v1/networks/{r}")
        click.echo(r)


COMMANDS = [network]
