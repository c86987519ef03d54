"""`orch config ...` and `orch secret ...`: small named blobs stored in the
cluster (as Swarm's configs and secrets). Secrets are encrypted in the
store and their data is never shown."""

from __future__ import annotations

import base64
import sys
from datetime import datetime, timezone

import click

from .client import Endpoint, request
from .output import FORMAT_OPTION, fail, print_json, print_table


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _group(kind: str) -> click.Group:
    plural = f"{kind}s"
    secret = kind == "secret"

    @click.group(name=kind, help=f"Manage {plural}.")
    def group() -> None:
        pass

    @group.command("create")
    @click.argument("name")
    @click.argument("file", type=click.Path(allow_dash=True))
    @click.option("-l", "--label", "labels", multiple=True, help="KEY=VALUE label (repeatable).")
    @FORMAT_OPTION
    @click.pass_obj
    def create(ep: Endpoint, name: str, file: str, labels: tuple[str, ...], fmt: str) -> None:
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
        obj = request(ep, "POST", f"/v1/{plural}",
                      {"name": name, "labels": lab, "data": base64.b64encode(data).decode()})
        if fmt == "json":
            print_json(obj)
        else:
            click.echo(obj["id"])

    create.help = f"Create a {kind} from FILE (or - for standard input)."

    @group.command("ls")
    @click.option("-q", "--quiet", is_flag=True, help="Only IDs.")
    @FORMAT_OPTION
    @click.pass_obj
    def ls(ep: Endpoint, quiet: bool, fmt: str) -> None:
        items = request(ep, "GET", f"/v1/{plural}")
        if fmt == "json":
            print_json(items)
            return
        if quiet:
            for c in items:
                click.echo(c["id"])
            return
        cols = [("ID", lambda c: c["id"]), ("NAME", lambda c: c["spec"]["name"])]
        if not secret:
            cols.append(("SIZE", lambda c: len(base64.b64decode(c["spec"].get("data", "")))))
        cols += [("CREATED", lambda c: _ts(c["meta"]["created_at"])),
                 ("UPDATED", lambda c: _ts(c["meta"]["updated_at"]))]
        print_table(sorted(items, key=lambda c: c["spec"]["name"]), cols)

    ls.help = f"List {plural}."

    @group.command("inspect")
    @click.argument("refs", nargs=-1, required=True)
    @click.option("--pretty", is_flag=True, help="Human-readable" + ("." if secret else ", with the data decoded."))
    @click.pass_obj
    def inspect(ep: Endpoint, refs: tuple[str, ...], pretty: bool) -> None:
        out = [request(ep, "GET", f"/v1/{plural}/{r}") for r in refs]
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
            if not secret:
                click.echo("Data:")
                click.echo(base64.b64decode(c["spec"].get("data", "")).decode(errors="replace"))

    inspect.help = f"Show {plural} by ID, ID prefix or name."

    @group.command("rm")
    @click.argument("refs", nargs=-1, required=True)
    @click.pass_obj
    def rm(ep: Endpoint, refs: tuple[str, ...]) -> None:
        for r in refs:
            request(ep, "DELETE", f"/v1/{plural}/{r}")
            click.echo(r)

    rm.help = f"Remove {plural} by ID, ID prefix or name (not while a service uses them)."
    return group


config = _group("config")
secret = _group("secret")
