"""`orch events`: follow what happens in the cluster (as `docker events`)."""

from __future__ import annotations

import asyncio
import datetime
import json
import urllib.parse
from typing import Any

import click

from .client import ConnectError, Endpoint


def _line(ev: dict[str, Any]) -> str:
    """2026-12-02T03:30:00.123456Z 1234.0 task state web.1.abc (from=running, to=failed, ...)."""
    t = datetime.datetime.fromtimestamp(ev.get("time", 0.0), datetime.timezone.utc)
    when = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    actor = ev.get("actor") or {}
    who = actor.get("name") or actor.get("id") or "-"
    attrs = dict(ev.get("attributes") or {})
    if actor.get("id") and actor.get("id") != who:
        attrs = {"id": actor["id"], **attrs}
    if ev.get("scope") == "local":
        attrs["scope"] = "local"
    shown = ", ".join(f"{k}={v}" for k, v in attrs.items() if v != "")
    return f"{when} {ev.get('id', '?')} {ev.get('type', '?')} {ev.get('action', '?')} {who}" + (
        f" ({shown})" if shown else "")


@click.command("events")
@click.option("--since", help="Show events after this event id (1234 or 1234.2), duration (10m) or time "
              "(unix seconds, or ISO 8601 like 2026-12-02T03:30:00Z).")
@click.option("--until", help="Stop at this event id, duration ago or time (without it: follow).")
@click.option("-f", "--filter", "filters", multiple=True,
              help="KEY=VALUE[,KEY=VALUE]: type, event, service, node, task, id, scope (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line.")
@click.pass_obj
def events(ep: Endpoint, since: str | None, until: str | None, filters: tuple[str, ...], fmt: str) -> None:
    """Stream cluster events: services, tasks (state changes with their errors,
    exec), nodes (down/up), networks, secrets, configs, stacks, leader changes.

    Each event has an id INDEX.SEQ, the same on every manager: after a
    reconnect (to any manager) `--since LAST_ID` resumes without gaps or
    repeats, as long as that manager still keeps it (else HTTP 410)."""
    from api.events import parse_bound, parse_filters

    from .engine import _stream

    params: list[tuple[str, str]] = []
    try:
        if since:
            parse_bound(since, "since")
            params.append(("since", since))
        if until:
            parse_bound(until, "until")
            params.append(("until", until))
        parse_filters(list(filters))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    params += [("filter", f) for f in filters]
    q = ("?" + urllib.parse.urlencode(params)) if params else ""

    last: list[str] = []

    async def run() -> None:
        import aiohttp

        try:
            async for ev in _stream(ep, "GET", f"/v1/events{q}"):
                if "error" in ev and "id" not in ev:
                    err = ev["error"]
                    raise click.ClickException(str(err.get("message", err) if isinstance(err, dict) else err))
                click.echo(json.dumps(ev, sort_keys=True) if fmt == "json" else _line(ev))
                last[:] = [str(ev.get("id", ""))]
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectError) as e:
            if isinstance(e, ConnectError) and not last:
                raise
            where = f"after event {last[0]}; resume with --since {last[0]}" if last else "before any event"
            raise click.ClickException(
                f"the event stream from {ep.describe()} broke {where} "
                f"(on any manager): {e}") from None

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


COMMANDS = [events]
