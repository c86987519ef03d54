"""`orch events`: follow what happens in the cluster (as `docker events`)."""

from __future__ import annotations

import asyncio
import datetime
import json
import urllib.parse
from typing import Any

import click

from .client import ConnectError, Endpoint


def _line(ev: Any) -> str:
    """2026-12-02T03:30:00.123456Z 1234.0 task state web.1.abc (from=running, state=failed, ...)."""
    t = datetime.datetime.fromtimestamp(ev.time, datetime.timezone.utc)
    when = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    who = ev.actor_name or ev.actor_id or "-"
    attrs = dict(ev.attributes)
    if ev.actor_id and ev.actor_id != who:
        attrs = {"id": ev.actor_id, **attrs}
    if ev.scope.value == "local":
        attrs["scope"] = "local"
    shown = ", ".join(f"{k}={v}" for k, v in attrs.items() if v != "")
    return f"{when} {ev.id} {ev.type.value} {ev.action} {who}" + (f" ({shown})" if shown else "")


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
    from api.events import EventRecord, parse_bound, parse_filters

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
                try:
                    rec = EventRecord.from_dict(ev)
                except ValueError as e:
                    raise click.ClickException(f"{ep.describe()} sent a bad event: {e}") from None
                click.echo(json.dumps(rec.to_dict(), sort_keys=True) if fmt == "json" else _line(rec))
                last[:] = [rec.id]
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
