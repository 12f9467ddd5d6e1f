"""`tokenbooth report` and `tokenbooth calls`: the ledger as tables, CSV or JSON."""

from __future__ import annotations

import argparse
import asyncio
import calendar
import concurrent.futures
import csv
import io
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from proxy import query
from proxy.backends import open_backend
from proxy.backends.postgres import PostgresBackend
from proxy.backends.sqlite import SqliteBackend

__all__ = ["add_commands", "format_table", "month_to_date"]

_REPORT_COLS = ("calls", "input_tokens", "cache_read_tokens", "cache_write_tokens",
                "output_tokens", "reasoning_tokens", "total_tokens", "cost_usd",
                "unpriced_calls", "estimated_calls", "pending_calls")
_CALL_COLS = ("started_at", "call_id", "agent", "session", "run", "upstream", "model",
              "outcome", "input_tokens", "output_tokens", "usage_source", "cost_usd")


def _cell(value: Any, key: str, no_cost: str = "-") -> str:
    """`no_cost` shows a NULL cost: a group with no priced usage is `-`; a call whose
    usage has no price is `unpriced`, a background response's create `pending` (never $0)."""
    if value is None:
        return no_cost if key == "cost_usd" else "-"
    if key == "cost_usd" and not isinstance(value, str):
        return f"${value:,.6f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], cols: Sequence[str],
                 no_cost: str = "-") -> str:
    cells = [[_cell(r.get(c), c, no_cost) for c in cols] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows)
               for c in cols]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(list(cols)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


async def month_to_date(backend: SqliteBackend | PostgresBackend,
                        now: datetime) -> dict[str, Any]:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    since = start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    totals = (await backend.usage([], since, None, {}))["totals"]
    days = calendar.monthrange(now.year, now.month)[1]
    elapsed = max((now - start).total_seconds() / 86400, 1 / 24)
    spent = totals["cost_usd"] or 0.0
    return {"month": start.strftime("%Y-%m"), "cost_usd": spent,
            "forecast_usd": round(spent / elapsed * days, 6),
            "unpriced_calls": totals["unpriced_calls"],
            "estimated_calls": totals["estimated_calls"],
            "pending_calls": totals["pending_calls"]}


def _emit(rows: list[dict[str, Any]], cols: Sequence[str], fmt: str,
          extra: dict[str, Any] | None = None, no_cost: str = "-") -> None:
    if fmt == "json":
        print(json.dumps({"rows": rows, **(extra or {})}, indent=2, default=str))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(cols), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        print(format_table(rows, cols, no_cost) if rows else "(no calls in this range)")


T = TypeVar("T")


def _ledger(target: str, must_exist: bool = True) -> SqliteBackend | PostgresBackend:
    """The backend for `target`; a SQLite file that is not there is the user's error."""
    backend = open_backend(target)
    if isinstance(backend, SqliteBackend) and must_exist and not Path(backend.path).exists():
        raise query.QueryError("--db", f"no ledger at {backend.path}")
    return backend


def _with_ledger(config: Any, work: Callable[[SqliteBackend | PostgresBackend], Awaitable[T]],
                 migrate: bool = False, must_exist: bool = True) -> T:
    """Run `work` on the configured ledger (SQLite file or PostgreSQL) and close it;
    `migrate` brings its schema up to date first (commands that write)."""
    backend = _ledger(config.ledger.target, must_exist)

    async def run() -> T:
        try:
            if migrate:
                await backend.open()
            return await work(backend)
        finally:
            await backend.aclose()
    return _run(run())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # called from code already running a loop (tests, an embedding program): its own thread
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def cmd_report(args: argparse.Namespace, config: Any) -> int:
    group_by = query.parse_group_by(args.by)
    since = query.parse_time("--since", args.since)
    until = query.parse_time("--until", args.until)
    filters = {k: getattr(args, k, None) for k in ("agent", "session", "run", "model",
                                                   "upstream")}
    async def work(backend: SqliteBackend | PostgresBackend
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
        return (await backend.usage(group_by, since, until, filters),
                await month_to_date(backend, datetime.now(UTC)))

    result, mtd = _with_ledger(config, work)
    rows = [*result["groups"], {**{k: "TOTAL" for k in group_by[:1]}, **result["totals"]}]
    cols = [*group_by, *_REPORT_COLS]
    if args.format == "json":
        _emit(result["groups"], cols, "json", {"totals": result["totals"], "since": since,
                                               "until": until, "month_to_date": mtd})
        return 0
    _emit(rows if args.format == "table" else result["groups"], cols, args.format)
    if args.format == "table":
        note = []
        if result["totals"]["unpriced_calls"]:
            note.append(f"{result['totals']['unpriced_calls']} unpriced call(s) are not in "
                        f"cost_usd")
        if result["totals"]["estimated_calls"]:
            note.append(f"{result['totals']['estimated_calls']} call(s) hold estimated tokens")
        if result["totals"]["pending_calls"]:
            note.append(f"{result['totals']['pending_calls']} background response(s) were "
                        "pending when created: each one's usage and cost are a row of their "
                        "own (same upstream_request_id) once the proxy sees it finished")
        print(f"\nMonth to date ({mtd['month']}): ${mtd['cost_usd']:,.4f}; "
              f"forecast for the month ${mtd['forecast_usd']:,.4f}")
        for n in note:
            print(f"Note: {n}")
    return 0


def cmd_reprice(args: argparse.Namespace, config: Any) -> int:
    """Recompute cost_usd and price_source from stored tokens and priced_units."""
    from collections import defaultdict
    from decimal import Decimal

    from proxy.pricing import PriceBook
    from proxy.reprice import COLUMNS, Repriced, reprice

    since = query.parse_time("--since", args.since)
    until = query.parse_time("--until", args.until)
    changes: list[Repriced] = []

    def change(rows: list[Any]) -> list[tuple[float | None, str | None, str]]:
        changes.extend(reprice(rows, PriceBook(config.prices), config.upstreams))
        return [(None if c.new_usd is None else float(c.new_usd), c.source, c.call_id)
                for c in changes]

    async def work(backend: SqliteBackend | PostgresBackend) -> None:
        await backend.reprice(since, until, change, COLUMNS, args.dry_run)

    _with_ledger(config, work, migrate=True)
    totals: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for c in changes:
        t = totals[c.model or "(unknown)"]
        t[0] += c.old_usd or 0
        t[1] += c.new_usd or 0
    changed = [c for c in changes if c.new_usd != c.old_usd]
    _emit([{"model": m, "calls": sum(1 for c in changes if (c.model or "(unknown)") == m),
            "old_cost_usd": float(o), "new_cost_usd": float(n)}
           for m, (o, n) in sorted(totals.items())],
          ["model", "calls", "old_cost_usd", "new_cost_usd"], args.format)
    verb = "would change" if args.dry_run else "changed"
    print(f"\n{len(changes)} priced call(s) read; {verb} the cost of {len(changed)}")
    return 0


def _transcript(path: Path, seen: set[str], errors: list[tuple[int, str]],
                latest: str) -> list[Any] | None:
    """The calls of one transcript, or None when `path` is not a regular file (a link to
    /dev/zero, a FIFO: opened without blocking, never read)."""
    import os
    import stat

    from proxy.dialects.anthropic.claude_code import read_transcript

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return list(read_transcript(f, seen, errors, latest))


def cmd_import(args: argparse.Namespace, config: Any) -> int:
    """Backfill Claude Code's own transcripts: one row per API call, `usage_source`
    `client_log`, priced like a proxied call, skipping calls the proxy already metered."""
    import hashlib
    import time
    from decimal import Decimal

    from proxy.dialects import price_provider
    from proxy.dialects.anthropic.usage import from_anthropic
    from proxy.outcome import ending
    from proxy.pricing import PriceBook
    from proxy.record import COLUMNS, CallRecord, iso_utc

    root = Path(args.path).expanduser() if args.path else Path.home() / ".claude" / "projects"
    if not root.exists():
        raise query.QueryError("PATH", f"no Claude Code transcripts at {root}")
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    up = config.upstreams.get("anthropic")
    pid = price_provider(up.dialect, up.name) if up is not None else None
    prices = PriceBook(config.prices)
    seen: set[str] = set()
    bad = imported = skipped = again = tokens = not_files = 0
    cost, sessions, unpriced = Decimal(0), set(), 0
    show = sys.stderr.isatty() or args.progress
    latest = iso_utc(time.time() + 86400)  # a time later than tomorrow is not a real call
    logged = ending(None, answer="complete")  # the client logged an answer it got whole

    async def work(backend: SqliteBackend | PostgresBackend) -> None:
        nonlocal bad, imported, skipped, again, tokens, cost, unpriced, not_files
        for i, path in enumerate(files, 1):
            errors: list[tuple[int, str]] = []
            calls = await asyncio.to_thread(_transcript, path, seen, errors, latest)
            if calls is None:
                not_files += 1
                print(f"tokenbooth: {path}: not a regular file, skipped", file=sys.stderr)
                continue
            bad += len(errors)
            for n, why in errors[:3]:
                print(f"tokenbooth: {path}:{n}: {why}, skipped", file=sys.stderr)
            ids = [c.message_id for c in calls] + [c.request_id for c in calls if c.request_id]
            metered: set[str] = set()  # by the proxy
            imported_before: set[str] = set()  # by an earlier import
            for rid, source in await backend.request_ids(ids):
                (imported_before if source == "client_log" else metered).add(rid)
            rows = []
            for c in calls:
                if c.message_id in metered or c.request_id in metered:
                    skipped += 1
                    continue
                if c.message_id in imported_before:
                    again += 1
                    continue
                usage = from_anthropic(c.usage)
                price = prices.price(c.model, pid, usage)
                ts = c.timestamp or iso_utc(path.stat().st_mtime)
                tags = {"agent": "claude-code", "source": "claude_code_log"}
                if c.session_id:
                    tags["session"] = c.session_id
                if c.agent_id:
                    tags["claude_code_agent"] = c.agent_id
                rec = CallRecord(
                    call_id="cc" + hashlib.sha256(c.message_id.encode()).hexdigest()[:22],
                    started_at=ts, ended_at=ts, duration_ms=0.0, ttft_ms=None,
                    upstream="anthropic", dialect=up.dialect if up else None,
                    operation="messages", method="POST", path="/anthropic/v1/messages",
                    request_model=c.model, response_model=c.model, model=price.model,
                    stream=False, status_code=logged.status_code, outcome=logged.outcome,
                    input_tokens=usage.input_tokens, cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens,
                    total_tokens=usage.total_tokens, usage_source="client_log", estimator=None,
                    cost_usd=price.cost_usd, price_source=price.source, agent="claude-code",
                    session=c.session_id, run=None, tags=tags, end_user=None,
                    client=None, key_id=None, upstream_request_id=c.message_id,
                    error=logged.error,
                    usage_raw=json.dumps(c.usage, separators=(",", ":")),
                    service_tier=usage.service_tier, priced_units=usage.priced_units() or None)
                rows.append(rec.to_row())
                imported += 1
                tokens += usage.total_tokens or 0
                if price.cost_usd is None:
                    unpriced += 1
                else:
                    cost += price.cost_usd
                if c.session_id:
                    sessions.add(c.session_id)
            if rows:
                assert len(rows[0]) == len(COLUMNS)
                await backend.write(rows)
            if show:
                done = int(30 * i / len(files))
                print(f"\r[{'#' * done}{' ' * (30 - done)}] {i}/{len(files)} files, "
                      f"{imported} calls", end="", file=sys.stderr, flush=True)

    _with_ledger(config, work, migrate=True, must_exist=False)
    if show:
        print(file=sys.stderr)
    print(f"imported {imported} call(s) from {len(files) - not_files} file(s) in {len(sessions)} "
          f"session(s): {tokens:,} tokens, ${cost:.4f}"
          + (f" ({unpriced} unpriced)" if unpriced else "")
          + f"; skipped {skipped} already metered by the proxy"
          + (f" and {again} imported before" if again else "")
          + (f"; {bad} unreadable line(s)" if bad else "")
          + (f"; {not_files} path(s) not a regular file" if not_files else ""))
    return 0


def cmd_copy(args: argparse.Namespace, config: Any) -> int:
    """Copy every row of this ledger into another (SQLite to PostgreSQL, say): through the
    destination's own write, so its roll-up and budget spend follow; a row it holds
    already is skipped, so the copy can run again after an interruption."""
    source = _ledger(config.ledger.target)
    dest = open_backend(args.to)
    if repr(dest) == repr(source):
        raise query.QueryError("--to", "is the ledger being copied")

    held = 0

    async def run() -> int:
        nonlocal held
        copied = 0
        try:
            await dest.open()
            after = 0
            while True:
                batch = await source.rows_after(after, 20_000)
                if not batch:
                    return copied
                rows = [row for _, row in batch]
                there = len(await dest.recorded([row[0] for row in rows]))  # call_id first
                await dest.write(rows)
                after = batch[-1][0]
                copied += len(rows) - there
                held += there
                print(f"\rcopied {copied:,} rows", end="", file=sys.stderr, flush=True)
        finally:
            await source.aclose()
            await dest.aclose()

    copied = _run(run())
    print(file=sys.stderr)
    print(f"copied {copied:,} row(s) from {source!r} to {dest!r}"
          + (f"; skipped {held:,} it held already" if held else ""))
    return 0


def cmd_calls(args: argparse.Namespace, config: Any) -> int:
    if args.limit < 1:
        raise query.QueryError("--limit", "must be at least 1")
    filters = {"session": args.session, "agent": args.agent, "run": args.run}
    since = query.parse_time("--since", args.since)

    async def work(backend: SqliteBackend | PostgresBackend) -> list[dict[str, Any]]:
        return await backend.calls(since, None, filters, args.limit)

    rows = _with_ledger(config, work)
    if args.format != "json":  # its cost is not known yet: not unpriced
        rows = [{**r, "cost_usd": "pending"} if r.get("usage_source") == "pending" else r
                for r in rows]
    _emit(rows, _CALL_COLS if args.format != "json" else list(rows[0]) if rows else [],
          args.format, no_cost="unpriced")
    return 0


def add_commands(sub: Any, add_common: Callable[..., None],
                 load_config: Callable[[argparse.Namespace], Any]) -> None:
    def runner(fn: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace],
                                                                        int]:
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args, load_config(args))
            except query.QueryError as exc:
                print(f"tokenbooth: {exc}", file=sys.stderr)
                return 2
            except (*SqliteBackend.unavailable, *PostgresBackend.unavailable) as exc:
                print(f"tokenbooth: cannot reach the ledger: {exc}", file=sys.stderr)
                return 1
        return run

    p = sub.add_parser("report", help="usage and spend grouped by any key")
    add_common(p)
    p.add_argument("--by", default="agent,model",
                   help=f"comma-separated: {', '.join(query.GROUP_KEYS)}, tag:<key>")
    p.add_argument("--since", help="7d, 12h, 2w, or a date like 2026-11-01")
    p.add_argument("--until")
    for f in ("agent", "session", "run", "model", "upstream"):
        p.add_argument(f"--{f}")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=runner(cmd_report))
    p = sub.add_parser("reprice", help="recompute cost from stored tokens with current prices")
    add_common(p)
    p.add_argument("--since", required=True, help="7d, 12h, 2w, or a date like 2026-11-01")
    p.add_argument("--until")
    p.add_argument("--dry-run", action="store_true",
                   help="print old and new totals per model; change nothing")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=runner(cmd_reprice))
    p = sub.add_parser("import", help="backfill calls from a client's own logs")
    add_common(p)
    p.add_argument("source", choices=("claude-code",))
    p.add_argument("path", nargs="?", help="transcripts (default ~/.claude/projects)")
    p.add_argument("--progress", action="store_true", help="show progress even when piped")
    p.set_defaults(func=runner(cmd_import))
    p = sub.add_parser("copy-ledger", help="copy every row into another ledger (once)")
    add_common(p)
    p.add_argument("--to", required=True, help="the destination: postgresql://... or a "
                                               "SQLite path")
    p.set_defaults(func=runner(cmd_copy))
    p = sub.add_parser("calls", help="recent calls for a session, agent or run")
    add_common(p)
    p.add_argument("--session")
    p.add_argument("--agent")
    p.add_argument("--run")
    p.add_argument("--since")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=runner(cmd_calls))
