"""`service ps` and `stack ps`: tasks by slot with their history, as Swarm
shows them: each slot's current task, then its previous ones (newest first)
named ` \\_ NAME`, with an ERROR column; `--filter` (desired-state, node,
name, id), `-q`, `--no-trunc`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from .output import FORMAT_OPTION
from .progress import LIVE, group_slots

FILTER_KEYS = ("desired-state", "node", "name", "id")
HISTORY_PREFIX = " \\_ "


def ps_options(f: Any) -> Any:
    """The options `service ps` and `stack ps` share."""
    for o in reversed([
        FORMAT_OPTION,
        click.option("-a", "--all", "all_", is_flag=True,
                     help="JSON: every task (the table always shows each slot's history)."),
        click.option("--no-trunc", is_flag=True, help="Do not shorten ids."),
        click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
                     help="desired-state=running|shutdown, node=NAME|ID, name=TASK NAME, id=ID prefix (repeatable; "
                          "values of one key: any matches)."),
        click.option("-q", "--quiet", is_flag=True, help="Print only task ids."),
    ]):
        f = o(f)
    return f


def parse_filters(filters: Sequence[str]) -> dict[str, list[str]]:
    """KEY=VALUE flags -> {key: [values]}; unknown keys and desired states are
    errors naming the flag."""
    out: dict[str, list[str]] = {}
    for f in filters:
        k, sep, v = f.partition("=")
        if not sep or not v:
            raise click.BadParameter(f"{f!r}: expected KEY=VALUE", param_hint="--filter")
        if k not in FILTER_KEYS:
            raise click.BadParameter(f"{f!r}: unknown key {k!r} (known: {', '.join(FILTER_KEYS)})",
                                     param_hint="--filter")
        if k == "desired-state" and v not in ("running", "shutdown"):
            raise click.BadParameter(f"{f!r}: desired-state is running or shutdown", param_hint="--filter")
        out.setdefault(k, []).append(v)
    return out


def matches(t: dict[str, Any], filters: dict[str, list[str]], name: str, nodes: dict[str, str]) -> bool:
    """Whether task `t` (named `name`) passes every filter key."""
    def want(key: str, ok: Callable[[str], bool]) -> bool:
        return key not in filters or any(ok(v) for v in filters[key])

    return (want("desired-state", lambda v: (t["desired_state"] in LIVE) == (v == "running"))
            and want("node", lambda v: bool(t["node_id"]) and v in (t["node_id"], nodes.get(t["node_id"])))
            and want("name", lambda v: name == v or name.startswith(v + "."))
            and want("id", lambda v: t["id"].startswith(v)))


def history_rows(tasks: Sequence[dict[str, Any]], task_name: Callable[[dict[str, Any]], str],
                 group_order: Callable[[dict[str, Any]], Any] = lambda t: ()) -> list[tuple[str, dict[str, Any]]]:
    """(name as shown, task) in `ps` order: slot by slot (sorted by
    `group_order` of the slot's current task, then slot), the current task
    first and its previous ones prefixed ` \\_ `."""
    groups = sorted(group_slots(tasks), key=lambda ts: (group_order(ts[0]), ts[0]["slot"], ts[0]["node_id"]))
    return [((HISTORY_PREFIX if i else "") + task_name(t), t) for ts in groups for i, t in enumerate(ts)]


def live_only(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tasks if t["desired_state"] in LIVE or t["status"]["state"] in LIVE]


def show(tasks: list[dict[str, Any]], *, fmt: str, all_: bool, no_trunc: bool, filters: Sequence[str], quiet: bool,
         task_name: Callable[[dict[str, Any]], str], nodes: Callable[[], dict[str, str]],
         nets: Callable[[], dict[str, str]], group_order: Callable[[dict[str, Any]], Any] = lambda t: ()) -> None:
    """Print the tasks as `ps` does. JSON without -a or --filter keeps the
    tasks that are (or are wanted) alive, as before the history column."""
    from .output import print_json
    from .service import print_tasks

    wanted = parse_filters(filters)
    node_map = nodes() if wanted.get("node") or fmt != "json" or quiet else {}
    tasks = [t for t in tasks if matches(t, wanted, task_name(t), node_map)]
    if fmt == "json":
        print_json(tasks if all_ or wanted else live_only(tasks))
        return
    rows = history_rows(tasks, task_name, group_order)
    cut = None if no_trunc else 12
    if quiet:
        for _, t in rows:
            click.echo(t["id"][:cut])
        return
    shown = {t["id"]: name for name, t in rows}
    print_tasks([t for _, t in rows], lambda t: shown[t["id"]], node_map, nets(), cut=cut)
