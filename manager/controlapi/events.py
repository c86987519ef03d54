"""GET /v1/events: the cluster's events as a stream of JSON lines.

Query parameters (as `orch events` takes them, see `api.events`):
- `since`: an event id ("1234" or "1234.2": what comes after it), a duration
  ("10m") or a time; without it only new events are sent;
- `until`: the same forms; the stream ends there (without it, it follows);
- `filter`: KEY=VALUE[,KEY=VALUE...], repeatable (type, event, service, node,
  task, id, scope).
An id older than this manager's kept history answers 410 `gone` (before the
stream starts), or, if the reader falls that far behind while following, a
last line {"error": {...}} before the stream ends.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from api.events import Bound, EventRecord, matches, parse_bound, parse_filters

from .common import Route, manager
from .errors import HTTPError, bad_request

FOLLOW_POLL = 1.0  # seconds between checks that a quiet follower is still connected


def _gone(message: str) -> HTTPError:
    return HTTPError(410, "gone", message)


def _past(rec: EventRecord, until: Bound | None) -> bool:
    if until is None:
        return False
    if until.cursor is not None:
        return rec.cursor > until.cursor
    assert until.time is not None
    return rec.time > until.time


async def events(request: web.Request) -> web.StreamResponse:
    from manager.events import EventsGone

    log = manager(request).events
    if log is None:
        raise HTTPError(503, "unavailable", "this manager keeps no event log")
    q = request.query
    try:
        since = parse_bound(q["since"], "since") if q.get("since") else None
    except ValueError as e:
        raise bad_request(str(e), "since") from None
    try:
        until = parse_bound(q["until"], "until") if q.get("until") else None
    except ValueError as e:
        raise bad_request(str(e), "until") from None
    try:
        filters = parse_filters(q.getall("filter", []))
    except ValueError as e:
        raise bad_request(str(e), "filter") from None

    cursor = log.newest
    if since is None:
        backlog: list[EventRecord] = []
    elif since.cursor is not None:
        try:
            backlog = log.after(since.cursor)
        except EventsGone as e:
            raise _gone(str(e)) from None
        cursor = since.cursor
    else:
        assert since.time is not None
        backlog = log.since_time(since.time)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    while True:
        out: list[str] = []
        done = False
        for rec in backlog:
            if _past(rec, until):
                done = True
                break
            cursor = max(cursor, rec.cursor)
            if matches(rec, filters):
                out.append(json.dumps(rec.to_dict()))
        if out:
            try:
                await resp.write(("\n".join(out) + "\n").encode())
            except (ConnectionError, RuntimeError):
                return resp
        if until is not None and not done:
            if until.cursor is not None:
                done = log.newest[0] >= until.cursor[0]  # every event of that index is in
            else:
                assert until.time is not None
                done = time.time() >= until.time
        tr = request.transport
        if done or log.closed or tr is None or tr.is_closing():
            break
        wait = FOLLOW_POLL
        if until is not None and until.time is not None:
            wait = max(0.0, min(wait, until.time - time.time()))
        await log.wait(wait)
        try:
            backlog = log.after(cursor)
        except EventsGone as e:
            err = {"error": {"code": "gone", "message": f"fell behind: {e}"}}
            await resp.write((json.dumps(err) + "\n").encode())
            break
    await resp.write_eof()
    return resp


ROUTES: tuple[Route, ...] = (Route("GET", "/v1/events", events),)
