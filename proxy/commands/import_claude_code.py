"""`tokenbooth import claude-code [PATH]`: backfill Claude Code's own transcripts. One row
per API call, `usage_source` `client_log`, priced like a proxied call, skipping calls the
proxy metered already and calls an earlier import wrote."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import stat
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.backends import LedgerBackend, query
from proxy.commands.common import with_ledger

__all__ = ["add_parser", "run"]

if TYPE_CHECKING:
    from proxy.dialects.anthropic.claude_code import TranscriptCall


def add_parser(sub: Any, add_common: Callable[..., None]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "import", help="backfill calls from a client's own logs")
    add_common(p)
    p.add_argument("source", choices=("claude-code",))
    p.add_argument("path", nargs="?", help="transcripts (default ~/.claude/projects)")
    p.add_argument("--progress", action="store_true", help="show progress even when piped")
    return p


def _transcript(path: Path, seen: set[str], errors: list[tuple[int, str]],
                latest: str) -> list[TranscriptCall] | None:
    """The calls of one transcript, or None when `path` is not a regular file (a link to
    /dev/zero, a FIFO: opened without blocking, never read)."""
    from proxy.dialects.anthropic.claude_code import read_transcript

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return list(read_transcript(f, seen, errors, latest))


def run(args: argparse.Namespace, config: Any) -> int:
    import json

    from proxy.dialects import price_provider
    from proxy.dialects.anthropic.usage import from_anthropic
    from proxy.pricing import PriceBook
    from proxy.record import COLUMNS, CallRecord, iso_utc

    root = Path(args.path).expanduser() if args.path else Path.home() / ".claude" / "projects"
    if not root.exists():
        raise query.QueryError("PATH", f"no Claude Code transcripts at {root}")
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    up = config.upstreams.get("anthropic")
    dialect = up.dialect if up is not None else None
    pid = price_provider(up.dialect, up.name) if up is not None else None
    prices = PriceBook(config.prices)
    seen: set[str] = set()
    bad = imported = skipped = again = tokens = not_files = 0
    cost, sessions, unpriced = Decimal(0), set(), 0
    show = sys.stderr.isatty() or args.progress
    latest = iso_utc(time.time() + 86400)  # a time later than tomorrow is not a real call

    async def work(backend: LedgerBackend) -> None:
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
                    upstream="anthropic", dialect=dialect,
                    operation="messages", method="POST", path="/anthropic/v1/messages",
                    request_model=c.model, response_model=c.model, model=price.model,
                    stream=False, status_code=None, outcome="ok",
                    input_tokens=usage.input_tokens, cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens,
                    total_tokens=usage.total_tokens, usage_source="client_log", estimator=None,
                    cost_usd=price.cost_usd, price_source=price.source, agent="claude-code",
                    session=c.session_id, run=None, tags=tags, end_user=None,
                    client=None, key_id=None, upstream_request_id=c.message_id, error=None,
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

    with_ledger(config, work, migrate=True, must_exist=False)
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
