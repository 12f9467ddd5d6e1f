"""Our own routes: /healthz, /readyz, /metrics, the read-only /api/* (usage, calls,
budgets, rate limits, provider quota, and the live SSE feed), consumer keys (/api/keys, admin
token) and what a key sees of itself (/api/me, the key itself). Handlers reach state only
through state.py keys."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import re
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import headers as hdr
from proxy import state
from proxy.admission.base import matches
from proxy.backends import query
from proxy.keys import KeySpecError, StoredKey, limits_json, parse_spec
from proxy.record import COLUMNS
from proxy.refusals import error_response

__all__ = ["routes"]

KEEPALIVE_SECONDS = 15.0
ANNOUNCE_SECONDS = 2.0  # a fleet page's snapshot waits this long at most for the others to know


def _authorized(request: web.Request) -> bool:
    token = request.app[state.CONFIG].admin.token
    if not token:
        return True
    got = request.headers.get("Authorization", "")
    return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())


def _host_name(host: str) -> str:
    """The name in a Host header, without port or brackets, lowercase."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _host_allowed(request: web.Request) -> bool:
    """Without an admin token a browser page on any site could read the API through DNS
    rebinding (its own name resolved to this proxy): answer only requests addressed to a
    loopback name, an IP address, or the configured listen host."""
    raw = request.headers.get("Host")
    if raw is None:
        return True  # not a browser
    name = _host_name(raw)
    listen = _host_name(request.app[state.CONFIG].host)
    if name == "localhost" or name.endswith(".localhost") or (name and name == listen):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _deny() -> web.Response:
    resp = error_response(401, "unauthorized", "admin.token is set: send "
                                               "'Authorization: Bearer <token>'")
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    life = request.app[state.LIFECYCLE]
    if life.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not life.ready:
        return web.json_response({"status": "starting"}, status=503)
    ledger = request.app[state.LEDGER]
    if not ledger.writing():  # never expected: the writer outlives every error
        return web.json_response({"status": "ledger_writer_stopped"}, status=503)
    if ledger.stuck_rows:  # rows not in the database: send traffic to a replica that can
        # record it (`ledger_full`: some only in memory, the spool cannot be written)
        return web.json_response(
            {"status": "ledger_full" if ledger.held else "ledger_unavailable",
             "spooled_rows": ledger.spooled_rows, "held_rows": len(ledger.held)}, status=503)
    return web.json_response({"status": "ready", "inflight": life.inflight})


async def metrics(request: web.Request) -> web.Response:
    config = request.app[state.CONFIG]
    if config.metrics.require_auth and not _authorized(request):
        return _deny()
    m = request.app[state.METRICS]
    ledger = request.app[state.LEDGER]
    m.ledger_queue.set(ledger.queue.qsize() + len(ledger.held))  # held rows wait too
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _filters(request: web.Request) -> tuple[str | None, str | None, dict[str, str | None]]:
    q = request.query
    unknown = set(q) - {"since", "until", "group_by", "limit", *query.FILTERS}
    if unknown:
        name = sorted(unknown)[0]
        raise query.QueryError(name, "unknown parameter")
    since = query.parse_time("since", q.get("since"))
    until = query.parse_time("until", q.get("until"))
    return since, until, {k: q.get(k) for k in query.FILTERS}


def _api(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not _authorized(request):
            return _deny()
        if not request.app[state.CONFIG].admin.token and not _host_allowed(request):
            return error_response(
                403, "host_not_allowed", "Host header: without admin.token the API answers "
                "only at localhost, an IP address or listen.host; set admin.token to use "
                "another name")
        try:
            result: web.StreamResponse = await handler(request)
            return result
        except query.QueryError as exc:
            return error_response(400, "invalid_parameter", str(exc),
                                  extra={"param": exc.param})
        except request.app[state.LEDGER].backend.unavailable as exc:
            return error_response(503, "ledger_unavailable", f"ledger not readable: {exc}")
    return wrapped


@_api
async def api_usage(request: web.Request) -> web.Response:
    since, until, filters = _filters(request)
    group_by = query.parse_group_by(request.query.get("group_by"))
    backend = request.app[state.LEDGER].backend
    return web.json_response(await backend.usage(group_by, since, until, filters))


@_api
async def api_calls(request: web.Request) -> web.Response:
    since, until, filters = _filters(request)
    raw = request.query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 10_000:  # not "²"
        raise query.QueryError("limit", f"{raw!r} is not a whole number from 1 to 10000")
    rows = await request.app[state.LEDGER].backend.calls(since, until, filters, int(raw))
    return web.json_response({"calls": rows})


@_api
async def api_call(request: web.Request) -> web.Response:
    """From the ledger; a call it has not written yet (the next flush will) from the
    recorder's recent records, as the ledger row will read."""
    call_id = request.match_info["call_id"]
    rows = await request.app[state.LEDGER].backend.calls(None, None, {}, 1, call_id)
    if rows:
        return web.json_response(rows[0])
    record = await request.app[state.RECORDER].find(call_id)
    if record is None:
        return error_response(404, "not_found", f"no call {call_id!r} in the ledger")
    return web.json_response(query.row_json(dict(zip(COLUMNS, record.to_row(), strict=True))))


@_api
async def api_budgets(request: web.Request) -> web.Response:
    return web.json_response({"budgets": request.app[state.BUDGETS].snapshot()})


# --- consumer keys (issue 20) ---

async def _json_body(request: web.Request) -> Any:
    """A JSON body, sent as such: a form another site's page could post is refused."""
    ctype = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if ctype != "application/json":
        raise KeySpecError("Content-Type", "send the key as JSON (Content-Type: "
                                           "application/json)")
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise KeySpecError("body", "not valid JSON") from None


def _key_errors(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            result: web.StreamResponse = await handler(request)
            return result
        except KeySpecError as exc:
            return error_response(400, "invalid_request", str(exc), extra={"param": exc.field})
    wrapped.__name__ = handler.__name__
    return wrapped


def _no_key(key_id: str) -> web.Response:
    return error_response(404, "not_found", f"no consumer key {key_id!r}")


def _key_json(stored: StoredKey, last_used: dict[str, str] | None = None) -> dict[str, Any]:
    out = stored.to_json()
    if last_used is not None:
        out["last_used_at"] = last_used.get(stored.key.id)
    return out


async def _changed(request: web.Request, stored: StoredKey, extra: dict[str, Any] | None = None,
                   status: int = 200) -> web.Response:
    """The key as stored after a change, answered once this process's registry has it."""
    await request.app[state.KEYS].load()
    return web.json_response({**_key_json(stored), **(extra or {})}, status=status)


@_api
@_key_errors
async def api_keys_create(request: web.Request) -> web.Response:
    spec = parse_spec(await _json_body(request))
    stored, secret = await request.app[state.KEY_ADMIN].create(spec)
    return await _changed(request, stored, {"key": secret}, status=201)


@_api
async def api_keys_list(request: web.Request) -> web.Response:
    keys = await request.app[state.KEY_ADMIN].all()
    used = await request.app[state.LEDGER].backend.keys_last_used()
    return web.json_response({"keys": [_key_json(k, used) for k in keys]})


@_api
async def api_key_get(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    stored = await request.app[state.KEY_ADMIN].get(key_id)
    if stored is None:
        return _no_key(key_id)
    used = await request.app[state.LEDGER].backend.keys_last_used()
    return web.json_response(_key_json(stored, used))


@_api
@_key_errors
async def api_key_patch(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    spec = parse_spec(await _json_body(request), partial=True)
    stored = await request.app[state.KEY_ADMIN].change(key_id, spec)
    return _no_key(key_id) if stored is None else await _changed(request, stored)


@_api
async def api_key_delete(request: web.Request) -> web.Response:
    """Revokes: the key stops working at once (on every replica within a second); it and
    its calls stay on record."""
    key_id = request.match_info["key_id"]
    stored = await request.app[state.KEY_ADMIN].revoke(key_id)
    return _no_key(key_id) if stored is None else await _changed(request, stored)


@_api
@_key_errors
async def api_key_rotate(request: web.Request) -> web.Response:
    """A new secret (shown once) for the same key; the old secret stops working."""
    key_id = request.match_info["key_id"]
    got = await request.app[state.KEY_ADMIN].rotate(key_id)
    return _no_key(key_id) if got is None else await _changed(request, got[0], {"key": got[1]})


def _me_budgets(request: web.Request, ctx: dict[str, str | None]) -> list[dict[str, Any]]:
    """The budgets every call of the key falls under: those matching only on what the key
    itself fixes (its id, its name as `client`, its tags)."""
    out = []
    now = datetime.now(UTC)
    for w in request.app[state.BUDGETS].windows():
        if not matches(w.cfg, ctx):
            continue
        w.roll(now)
        spend, limit = w.spend, w.limit
        out.append({"name": w.cfg.budget, "window": w.cfg.id, "spend_usd": float(spend),
                    "limit_usd": w.cfg.limit_usd,
                    "remaining_usd": float(max(limit - spend, Decimal(0))),
                    "resets_at": w.window_end.strftime("%Y-%m-%dT%H:%M:%SZ")
                    if w.window_end is not None else None})
    return out


async def api_me(request: web.Request) -> web.Response:
    """What a consumer key may see of itself: authenticated by the key (sent as the
    forwarder reads credentials), not by the admin token."""
    cred = hdr.credential(request.headers)
    stored = request.app[state.KEYS].lookup(cred) if cred else None
    if stored is None or stored.refusal(time.time()) is not None:
        why = "no consumer key sent" if not cred else "not a live consumer key"
        resp = error_response(401, "authentication_error", f"{why}: send the key as "
                              "'Authorization: Bearer tb-...' (or x-api-key, x-goog-api-key)")
        resp.headers["WWW-Authenticate"] = "Bearer"
        return resp
    key = stored.key
    ctx: dict[str, str | None] = {**key.tags, "client": key.name, "key": key.id}
    today = datetime.now(UTC).strftime("%Y-%m-%dT00:00:00.000Z")
    backend = request.app[state.LEDGER].backend
    try:
        calls, cost = await backend.key_calls(key.id, today)
    except backend.unavailable as exc:
        return error_response(503, "ledger_unavailable", f"ledger not readable: {exc}")
    return web.json_response({
        "key": {"id": key.id, "name": key.name, "tags": dict(key.tags)},
        "limits": limits_json(key.limits),
        "budgets": _me_budgets(request, ctx),
        "today": {"calls": calls, "cost_usd": float(cost)}})

# --- end consumer keys ---


@_api
async def api_notices(request: web.Request) -> web.Response:
    """The newest budget notices (thresholds crossed, forecasts), one per notification sink,
    and how their delivery went (`sent_at`, `attempts`, `last_error`)."""
    raw = request.query.get("limit", "100")
    if set(request.query) - {"limit"}:
        raise query.QueryError(sorted(set(request.query) - {"limit"})[0], "unknown parameter")
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= 1000:
        raise query.QueryError("limit", f"{raw!r} is not a whole number from 1 to 1000")
    rows = await request.app[state.LEDGER].backend.notices(int(raw))
    return web.json_response({"notices": rows})


@_api
async def api_rate_limits(request: web.Request) -> web.Response:
    """Each rate limit's window: the fleet's on a shared ledger."""
    return web.json_response({"rate_limits": await request.app[state.RATES].report()})


@_api
async def api_quota(request: web.Request) -> web.Response:
    """Each provider account's latest quota reading (what this replica's calls saw)."""
    return web.json_response({"accounts": request.app[state.QUOTA].snapshot()})


@_api
async def api_live(request: web.Request) -> web.StreamResponse:
    feed = request.app[state.FEED]
    recorder = request.app[state.RECORDER]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    sub = feed.subscribe()
    try:
        if sub.announced is not None:  # a fleet: the others relay to this watcher from now
            with contextlib.suppress(TimeoutError):  # the ledger is away: show what is here
                await asyncio.wait_for(asyncio.shield(sub.announced), ANNOUNCE_SECONDS)
        snapshot = [c.to_json() for c in recorder.inflight.values()]
        await resp.write(f"event: snapshot\ndata: {json.dumps({'calls': snapshot})}\n\n"
                         .encode())
        while True:
            try:
                kind, data = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            await resp.write(f"event: {kind}\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass
    finally:
        feed.unsubscribe(sub)
    return resp


_UI = Path(__file__).parent / "static" / "ui.html"
_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def _page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy: its own inline script may run (named by
    its SHA-256), no other script (one injected into the page's HTML included)."""
    page = _UI.read_bytes()
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
                      for m in _SCRIPT.findall(page))
    return page, (f"default-src 'self'; script-src {hashes}; style-src 'unsafe-inline'; "
                  "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


async def ui(request: web.Request) -> web.Response:
    """The live page: static, no data of its own (it asks /api/* with the admin token the
    user types, kept in the tab), nothing fetched from elsewhere."""
    page, csp = await asyncio.to_thread(_page)  # rare: read each time, off the loop
    return web.Response(body=page, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": csp})


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


async def favicon(request: web.Request) -> web.Response:
    """Browsers ask for it with every page: no icon, no 404 (and no asking again today)."""
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/", root),
        web.get("/ui", ui),
        web.get("/favicon.ico", favicon),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/api/usage", api_usage),
        web.get("/api/calls", api_calls),
        web.get("/api/calls/{call_id}", api_call),
        web.get("/api/budgets", api_budgets),
        web.get("/api/notices", api_notices),
        web.get("/api/quota", api_quota),
        web.get("/api/rate_limits", api_rate_limits),
        web.get("/api/live", api_live),
        web.post("/api/keys", api_keys_create),
        web.get("/api/keys", api_keys_list),
        web.get("/api/keys/{key_id}", api_key_get),
        web.patch("/api/keys/{key_id}", api_key_patch),
        web.delete("/api/keys/{key_id}", api_key_delete),
        web.post("/api/keys/{key_id}/rotate", api_key_rotate),
        web.get("/api/me", api_me),
    ]
