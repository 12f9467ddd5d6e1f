"""`tokenbooth import claude-code [PATH]`: backfill Claude Code's own transcripts. One row
per API call, `usage_source` `client_log`, built by the same `build.build_record` as a
proxied call (so priced alike), skipping calls the proxy metered already and calls an
earlier import wrote."""

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

__all__ = ["add_parser", "run", "transcript_facts"]

if TYPE_CHECKING:
    from proxy.dialects.anthropic.claude_code import TranscriptCall
    from proxy.record import CallFacts


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


def transcript_facts(call: TranscriptCall, written: float, dialect: str | None,
                     price_provider: str | None) -> CallFacts:
    """The facts of one transcript call, as the proxy would have seen them: an Anthropic
    Messages call whose response reported `call.usage`. `written`: when the transcript
    was written (the call's time when it names none)."""
    from proxy.dialects.anthropic.usage import from_anthropic
    from proxy.dialects.base import Observation
    from proxy.record import CallFacts, iso_utc

    tags = {"agent": "claude-code", "source": "claude_code_log"}
    if call.session_id:
        tags["session"] = call.session_id
    if call.agent_id:
        tags["claude_code_agent"] = call.agent_id
    return CallFacts(
        call_id="cc" + hashlib.sha256(call.message_id.encode()).hexdigest()[:22],
        started=written, t0=0.0, ended=0.0, logged_at=call.timestamp or iso_utc(written),
        upstream="anthropic", dialect=dialect, operation="messages", method="POST",
        path="/anthropic/v1/messages", path_model=call.model, tags=tags,
        price_provider=price_provider, usage_from="client_log",
        observation=Observation(usage=from_anthropic(call.usage), usage_raw=call.usage,
                                response_model=call.model, status="complete",
                                upstream_request_id=call.message_id))


def run(args: argparse.Namespace, config: Any) -> int:
    from proxy.build import build_record
    from proxy.dialects import price_provider
    from proxy.estimate import Estimator
    from proxy.pricing import PriceBook
    from proxy.record import COLUMNS, iso_utc

    root = Path(args.path).expanduser() if args.path else Path.home() / ".claude" / "projects"
    if not root.exists():
        raise query.QueryError("PATH", f"no Claude Code transcripts at {root}")
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    up = config.upstreams.get("anthropic")
    dialect = up.dialect if up is not None else None
    pid = price_provider(up.dialect, up.name) if up is not None else None
    prices = PriceBook(config.prices, config.adjustments)
    estimator = Estimator(dict(config.estimation_factors))  # never used: usage is reported
    seen: set[str] = set()
    bad = imported = skipped = again = tokens = not_files = 0
    cost, sessions, unpriced = Decimal(0), set(), 0
    show = sys.stderr.isatty() or args.progress
    latest = iso_utc(time.time() + 86400)  # a time later than tomorrow is not a real call

    def no_key(_credential: str | None) -> None:  # a transcript holds no credential
        return None

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
                written = 0.0 if c.timestamp else path.stat().st_mtime
                facts = transcript_facts(c, written, dialect, pid)
                rec = build_record(facts, estimator, prices, no_key)
                rows.append(rec.to_row())
                imported += 1
                tokens += rec.total_tokens or 0
                if rec.cost_usd is None:
                    unpriced += 1
                else:
                    cost += rec.cost_usd
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
