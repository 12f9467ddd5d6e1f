"""What the ledger commands share: opening the configured ledger for one piece of work,
running it from synchronous code, and printing rows as a table, CSV or JSON."""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from proxy.backends import LedgerBackend, open_backend, query
from proxy.backends.registry import unavailable_errors

__all__ = ["Command", "emit", "format_table", "open_ledger", "run_async", "runner",
           "with_ledger"]

T = TypeVar("T")
Command = Callable[[Any, Any], int]  # (parsed arguments, Config) -> exit status


_COSTS = ("cost_usd", "list_cost_usd")  # charged, and the list price's (pricing.adjustments)


def _cell(value: Any, key: str, no_cost: str = "-") -> str:
    """`no_cost` shows a NULL cost: a group with no priced usage is `-`; a call whose
    usage has no price is `unpriced`, a background response's create `pending` (never $0)."""
    if value is None:
        return no_cost if key in _COSTS else "-"
    if key in _COSTS and not isinstance(value, str):
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


def emit(rows: list[dict[str, Any]], cols: Sequence[str], fmt: str,
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


def open_ledger(target: str, must_exist: bool = True) -> LedgerBackend:
    """The backend for `target`; a ledger file that is not there is the user's error."""
    backend = open_backend(target)
    if backend.path is not None and must_exist and not Path(backend.path).exists():
        raise query.QueryError("--db", f"no ledger at {backend.path}")
    return backend


def with_ledger(config: Any, work: Callable[[LedgerBackend], Awaitable[T]],
                migrate: bool = False, must_exist: bool = True) -> T:
    """Run `work` on the configured ledger (SQLite file or PostgreSQL) and close it;
    `migrate` brings its schema up to date first (commands that write)."""
    backend = open_ledger(config.ledger.target, must_exist)

    async def run() -> T:
        try:
            if migrate:
                await backend.open()
            return await work(backend)
        finally:
            await backend.aclose()
    return run_async(run())


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # called from code already running a loop (tests, an embedding program): its own thread
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def runner(command: Command, load_config: Callable[[Any], Any]) -> Callable[[Any], int]:
    """`command` as an argparse `func`: a bad parameter exits 2, an unreachable ledger 1,
    each with one line on stderr."""
    def run(args: Any) -> int:
        config = load_config(args)
        try:
            return command(args, config)
        except query.QueryError as exc:
            print(f"tokenbooth: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            if isinstance(exc, unavailable_errors()):
                print(f"tokenbooth: cannot reach the ledger: {exc}", file=sys.stderr)
                return 1
            raise
    return run
