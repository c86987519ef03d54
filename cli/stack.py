"""`orch stack ...`: declarative stacks from compose files, as `docker stack`.

The files are parsed here (every error with its file:line:col, before
anything is sent), the secret and config files they name are read here,
and the manager gets the normalised stack: it plans the change against
what exists and applies all of it in one transaction, or nothing.

`deploy --dry-run` and `diff` print the plan and exit 0 when nothing would
change, 1 when something would, 2 on errors (as `kubectl diff`); `deploy`
waits until the services it created or changed converged, unless --detach.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from . import taskps
from .client import APIError, ConnectError, Endpoint, request
from .output import FORMAT_OPTION, fail, print_json, print_table
from .service import _ago, node_names, print_services, wait_all_converged

RESOLVE_CHOICES = ["always", "changed", "never"]
SIGN = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}


def _compose_options(f: Any) -> Any:
    f = click.option("--env-file", "env_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Variables for interpolation, instead of the .env beside the first file (repeatable; "
                          "later files win; the process environment wins over all).")(f)
    return click.option("-c", "--compose-file", "files", multiple=True, required=True,
                        type=click.Path(dir_okay=False),
                        help="Compose file (repeatable: later files are merged over earlier ones).")(f)


def _exit_error(msg: str, code: int) -> NoReturn:
    fail(msg, code)


def _warn_once(warnings: Sequence[Any], seen: set[str]) -> None:
    for w in warnings:
        line = str(w)
        if line not in seen:
            seen.add(line)
            click.echo(f"warning: {line}", err=True)


def load_stack(files: Sequence[str], env_files: Sequence[str], stack: str | None, *, prune: bool = False,
               resolve_image: str = "always", check_version: int | None = None, error_code: int = 1) -> Any:
    """Parse the files (printing each parser warning once) and build the
    deploy request for `stack`; None for `stack` only loads (stack config).
    Errors are printed with their places and exit with `error_code`."""
    from api.compose import ComposeError, DiskFiles, dump_config, load_paths, to_specs
    from api.stacks import build_request, unapplied

    seen: set[str] = set()
    try:
        loaded = load_paths(list(files), env_files=list(env_files) if env_files else None)
        _warn_once(loaded.warnings, seen)
        if stack is None:
            return loaded
        specs = to_specs(loaded.project, stack, environment=loaded.environment, places=loaded.places)
        _warn_once(specs.warnings, seen)
        _warn_once(unapplied(specs, loaded.places), seen)
        return build_request(specs, read_file=DiskFiles().read_bytes, compose=dump_config(loaded.project),
                             places=loaded.places, prune=prune, resolve_image=resolve_image,
                             check_version=check_version)
    except ComposeError as e:
        for m in e.messages():
            click.echo(f"error: {m}", err=True)
        n = len(e.problems)
        _exit_error(f"{n} problem{'s' if n != 1 else ''} in the compose file{'s' if len(files) > 1 else ''}: "
                    "nothing was deployed", error_code)
    except OSError as e:
        _exit_error(f"cannot read {e.filename or 'a compose file'}: {e.strerror or e}", error_code)


# -- showing a plan --------------------------------------------------------------------


def _value(v: Any) -> str:
    if v is None:
        return "(none)"
    return json.dumps(v, separators=(", ", ": "), sort_keys=True)


def _tasks_note(e: dict[str, Any]) -> str:
    parts = []
    if e.get("tasks_replaced"):
        parts.append(f"{e['tasks_replaced']} task{'s' if e['tasks_replaced'] != 1 else ''} replaced")
    if e.get("tasks_started"):
        parts.append(f"{e['tasks_started']} started")
    if e.get("tasks_stopped"):
        parts.append(f"{e['tasks_stopped']} stopped")
    return ", ".join(parts)


def plan_lines(plan: dict[str, Any], *, unchanged: bool = True) -> list[str]:
    """The plan as text: one line per object (+ create, ~ update, - delete,
    = unchanged) with what happens to its tasks, then the changed fields of
    each update (path: old -> new)."""
    lines = []
    for e in plan["entries"]:
        action = e["action"]
        if action == "unchanged" and not unchanged:
            continue
        what = f"{e['kind']} {e['name']}"
        if e.get("object") and e["object"] != e["name"]:
            what += f" ({e['object']})"
        detail = [action]
        if e["kind"] == "service":
            tasks = _tasks_note(e)
            if tasks:
                detail.append(tasks)
        head = f"{SIGN[action]} {what}: {', '.join(detail)}"
        if e.get("note"):
            head += f" [{e['note']}]"
        lines.append(head)
        if e.get("new_digest"):
            lines.append(f"    image tag now resolves to {e['new_digest']}")
        for c in e.get("changes") or ():
            lines.append(f"    {c['path']}: {_value(c.get('old'))} -> {_value(c.get('new'))}")
    counts = {a: sum(1 for e in plan["entries"] if e["action"] == a) for a in SIGN}
    lines.append(f"{counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete, "
                 f"{counts['unchanged']} unchanged.")
    return lines


def _show_plan(plan: dict[str, Any], fmt: str, header: str) -> None:
    if fmt == "json":
        print_json(plan)
        return
    click.echo(header)
    for line in plan_lines(plan):
        click.echo(line)


def _diff(ep: Endpoint, files: Sequence[str], env_files: Sequence[str], stack: str, prune: bool, resolve_image: str,
          fmt: str) -> NoReturn:
    req = load_stack(files, env_files, stack, prune=prune, resolve_image=resolve_image, error_code=2)
    try:
        plan = request(ep, "POST", f"/v1/stacks/{stack}/plan", req.model_dump(mode="json"), timeout=120)
    except APIError as e:
        fail(f"{e} (HTTP {e.status})", 2)
    except ConnectError as e:
        fail(str(e), 2)
    for w in plan.get("warnings") or ():
        click.echo(f"warning: {w}", err=True)
    v = plan["version"]
    _show_plan(plan, fmt, f"stack {stack}: version {v}" + (" (new)" if v == 0 else "")
               + (f"; to apply exactly this plan: orch stack deploy --check-version {v} ..." if plan["changed"]
                  else ": nothing to change"))
    sys.exit(1 if plan["changed"] else 0)


# -- commands ------------------------------------------------------------------------------


@click.group()
def stack() -> None:
    """Deploy and manage stacks of services from compose files."""


@stack.command("deploy")
@_compose_options
@click.option("--prune", is_flag=True, help="Remove services, networks, secrets and configs of the stack that the "
                                            "files no longer name.")
@click.option("--dry-run", is_flag=True, help="Print what would change and exit: 0 nothing, 1 changes, 2 error.")
@click.option("-d", "--detach", is_flag=True, help="Return at once; do not wait for the services to converge.")
@click.option("--resolve-image", type=click.Choice(RESOLVE_CHOICES), default="always", show_default=True,
              help="Ask the registry for the digest of each image tag: every time, only for changed images, never.")
@click.option("--check-version", type=click.IntRange(min=0), default=None,
              help="Refuse unless the stack is at this version (as `stack diff` showed it; 0 = not deployed yet).")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait for convergence.")
@FORMAT_OPTION
@click.argument("name", metavar="STACK")
@click.pass_obj
def deploy(ep: Endpoint, files: tuple[str, ...], env_files: tuple[str, ...], prune: bool, dry_run: bool, detach: bool,
           resolve_image: str, check_version: int | None, timeout: float, fmt: str, name: str) -> None:
    """Deploy a new stack or update one: everything in one transaction, or nothing."""
    if dry_run:
        _diff(ep, files, env_files, name, prune, resolve_image, fmt)
    req = load_stack(files, env_files, name, prune=prune, resolve_image=resolve_image, check_version=check_version)
    out = request(ep, "POST", f"/v1/stacks/{name}/deploy", req.model_dump(mode="json"), timeout=120)
    plan = out["plan"]
    for w in plan.get("warnings") or ():
        click.echo(f"warning: {w}", err=True)
    version = out["stack"]["version"]
    if fmt == "json":
        print_json(out)
    else:
        click.echo(f"stack {name}: deployed version {version}")
        for line in plan_lines(plan, unchanged=False):
            click.echo(line)
    if detach:
        return
    wait = [out["services"][e["name"]] for e in plan["entries"]
            if e["kind"] == "service" and e["action"] in ("create", "update") and e["name"] in out["services"]]
    if wait:
        wait_all_converged(ep, wait, timeout, rollback_is_failure=True)


@stack.command("diff")
@_compose_options
@click.option("--prune", is_flag=True, help="Show what --prune would remove.")
@click.option("--resolve-image", type=click.Choice(RESOLVE_CHOICES), default="always", show_default=True)
@FORMAT_OPTION
@click.argument("name", metavar="STACK")
@click.pass_obj
def diff(ep: Endpoint, files: tuple[str, ...], env_files: tuple[str, ...], prune: bool, resolve_image: str, fmt: str,
         name: str) -> None:
    """What `deploy` would change (never writes): exit 0 nothing, 1 changes, 2 error."""
    _diff(ep, files, env_files, name, prune, resolve_image, fmt)


@stack.command("config")
@_compose_options
def config(files: tuple[str, ...], env_files: tuple[str, ...]) -> None:
    """Print the merged, interpolated, normalised compose file (offline)."""
    from api.compose import dump_config

    loaded = load_stack(files, env_files, None)
    click.echo(dump_config(loaded.project), nl=False)


@stack.command("ls")
@FORMAT_OPTION
@click.pass_obj
def ls(ep: Endpoint, fmt: str) -> None:
    """List stacks."""
    items = request(ep, "GET", "/v1/stacks")
    if fmt == "json":
        print_json(items)
        return
    print_table(items, [
        ("NAME", lambda s: s["spec"]["name"]),
        ("SERVICES", lambda s: s["summary"]["services"]),
        ("TASKS", lambda s: f"{s['summary']['tasks_running']}/{s['summary']['tasks_desired']}"),
        ("VERSION", lambda s: s["version"]),
        ("STATE", lambda s: "removing" if s["removing"] else "deployed"),
        ("UPDATED", lambda s: _ago(s["meta"]["updated_at"])),
    ])


@stack.command("services")
@click.argument("name", metavar="STACK")
@FORMAT_OPTION
@click.option("-q", "--quiet", is_flag=True, help="Print only the service ids.")
@click.pass_obj
def services(ep: Endpoint, name: str, fmt: str, quiet: bool) -> None:
    """List the services of a stack."""
    items = request(ep, "GET", f"/v1/stacks/{name}")["services"]
    if fmt == "json":
        print_json(items)
        return
    if quiet:
        for s in items:
            click.echo(s["id"])
        return
    print_services(items)


@stack.command("ps")
@click.argument("name", metavar="STACK")
@taskps.ps_options
@click.pass_obj
def ps(ep: Endpoint, name: str, fmt: str, all_: bool, no_trunc: bool, filters: tuple[str, ...], quiet: bool) -> None:
    """List the tasks of a stack's services, each slot's current task then its history."""
    tasks = request(ep, "GET", f"/v1/stacks/{name}/tasks")
    names = {s["id"]: s["spec"]["name"] for s in request(ep, "GET", f"/v1/stacks/{name}")["services"]}
    cut = None if no_trunc else 12

    def task_name(t: dict[str, Any]) -> str:
        svc = names.get(t["service_id"], t["service_id"][:12])
        return f"{svc}.{t['slot']}" if t["slot"] else f"{svc}.{t['node_id'][:cut]}"

    taskps.show(tasks, fmt=fmt, all_=all_, no_trunc=no_trunc, filters=filters, quiet=quiet, task_name=task_name,
                nodes=lambda: node_names(ep),
                nets=lambda: {n["id"]: n["spec"]["name"] for n in request(ep, "GET", "/v1/networks")},
                group_order=lambda t: names.get(t["service_id"], ""))


@stack.command("rm")
@click.argument("names", metavar="STACK...", nargs=-1, required=True)
@click.option("-d", "--detach", is_flag=True, help="Return at once; do not wait until the stack's tasks are gone.")
@click.option("--timeout", type=float, default=300, show_default=True)
@click.pass_obj
def rm(ep: Endpoint, names: tuple[str, ...], detach: bool, timeout: float) -> None:
    """Remove stacks: their services, networks, secrets and configs."""
    removed: dict[str, dict[str, Any]] = {}
    for name in names:
        out = request(ep, "DELETE", f"/v1/stacks/{name}")
        removed[name] = out
        for e in out["entries"]:
            what = f"{e['kind']} {e['object'] or e['name']}"
            click.echo(f"removing {what}" + (f": {e['note']}" if e.get("note") else ""))
    if detach:
        return
    deadline = time.monotonic() + timeout
    for name, out in removed.items():
        ids = set(out["services"].values())
        while True:
            left = [t for t in request(ep, "GET", "/v1/tasks") if t["service_id"] in ids]
            try:
                request(ep, "GET", f"/v1/stacks/{name}")
                pending = True
            except APIError as e:
                if e.status != 404:
                    raise
                pending = False
            if not left and not pending:
                break
            if time.monotonic() > deadline:
                fail(f"stack {name}: {len(left)} task(s) still stopping after {timeout:.0f} s"
                     + ("; its networks, secrets or configs wait for them" if pending else ""))
            time.sleep(0.2)
        click.echo(f"stack {name} removed", err=True)


COMMANDS: list[click.Command] = [stack]
