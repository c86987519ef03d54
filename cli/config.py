"""`orch config ...`: small named blobs stored in the cluster (as Swarm configs)."""

from __future__ import annotations

import base64
import sys
from datetime import datetime, timezone

import click

from .client import Endpoint, request
from .output import FORMAT_OPTION, fail, print_json, print_table


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def config() -> None:
    """Manage configs."""


@config.command("create")
@click.argument("name")
@click.argument("file", type=click.Path(allow_dash=True))
@click.option("-l", "--label", "labels", multiple=True, help="KEY=VALUE label (repeatable).")
@FORMAT_OPTION
@click.pass_obj
def create(ep: Endpoint, name: str, file: str, labels: tuple[str, ...], fmt: str) -> None:
    """Create a config from FILE (or - for standard input)."""
    if file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as e:
            fail(f"cannot read {file}: {e.strerror}")
    lab: dict[str, str] = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not k:
            fail(f"--label {item!r}: expected KEY=VALUE")
        lab[k] = v
    obj = request(
        ep,
        "POST",
        "/v1/configs",
        {"name": name, "labels": lab, "data": base64.b64encode(data).decode()},
    )
    if fmt == "json":
        print_json(obj)
    else:
        click.echo(obj["id"])


@config.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only IDs.")
@FORMAT_OPTION
@click.pass_obj
def ls(ep: Endpoint, quiet: bool, fmt: str) -> None:
    """List configs."""
    items = request(ep, "GET", "/v1/configs")
    if fmt == "json":
        print_json(items)
        return
    if quiet:
        for c in items:
            click.echo(c["id"])
        return
    print_table(
        sorted(items, key=lambda c: c["spec"]["name"]),
        [
            ("ID", lambda c: c["id"]),
            ("NAME", lambda c: c["spec"]["name"]),
            ("SIZE", lambda c: len(base64.b64decode(c["spec"].get("data", "")))),
            ("CREATED", lambda c: _ts(c["meta"]["created_at"])),
            ("UPDATED", lambda c: _ts(c["meta"]["updated_at"])),
        ],
    )


@config.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--pretty", is_flag=True, help="Human-readable, with the data decoded.")
@click.pass_obj
def inspect(ep: Endpoint, refs: tuple[str, ...], pretty: bool) -> None:
    """Show configs by ID, ID prefix or name."""
    out = [request(ep, "GET", f"/v1/configs/{r}") for r in refs]
    if not pretty:
        print_json(out)
        return
    for c in out:
        click.echo(f"ID:       {c['id']}")
        click.echo(f"Name:     {c['spec']['name']}")
        for k, v in sorted(c["spec"].get("labels", {}).items()):
            click.echo(f"Label:    {k}={v}")
        click.echo(f"Version:  {c['meta']['version']}")
        click.echo(f"Created:  {_ts(c['meta']['created_at'])}")
        click.echo("Data:")
        click.echo(base64.b64decode(c["spec"].get("data", "")).decode(errors="replace"))


@config.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def rm(ep: Endpoint, refs: tuple[str, ...]) -> None:
    """Remove configs by ID, ID prefix or name."""
    for r in refs:
        request(ep, "DELETE", f"/v1/configs/{r}")
        click.echo(r)
