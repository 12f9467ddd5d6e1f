"""Reports on a big ledger: 5 million rows (90 days at ~55k calls a day) written into each
backend, then `tokenbooth report --by agent,model --since 30d`, `report --by day --since
90d` (the command, timed as a whole process) and `GET /api/usage?group_by=agent&since=30d`
(through a running `tokenbooth serve`).

    python -m bench.report_bench [--rows 5000000] [--backend sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.backends import open_backend
from proxy.record import COLUMNS

AGENTS = [f"agent-{i}" for i in range(20)]
MODELS = [("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("o3", "openai"),
          ("claude-sonnet-4-5", "anthropic"), ("claude-haiku-4-5", "anthropic"),
          ("gemini-2.5-pro", "gemini"), ("gemini-2.5-flash", "gemini"),
          ("deepseek-chat", "deepseek")]
BATCH = 50_000


def rows(n: int, seed: int = 7) -> Any:
    rng = random.Random(seed)
    end = datetime.now(UTC)
    start = end - timedelta(days=90)
    span = (end - start).total_seconds()
    idx = {c: i for i, c in enumerate(COLUMNS)}
    for b in range(0, n, BATCH):
        out = []
        for i in range(b, min(n, b + BATCH)):
            t = start + timedelta(seconds=span * i / n)
            ts = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
            model, upstream = MODELS[rng.randrange(len(MODELS))]
            agent = AGENTS[rng.randrange(len(AGENTS))]
            inp, out_t = rng.randrange(50, 20_000), rng.randrange(1, 2_000)
            row: list[Any] = [None] * len(COLUMNS)
            row[idx["call_id"]] = f"bench-{i:09d}"
            row[idx["started_at"]] = row[idx["ended_at"]] = ts
            row[idx["duration_ms"]] = 800.0
            row[idx["upstream"]], row[idx["dialect"]] = upstream, upstream
            row[idx["operation"]], row[idx["method"]] = "chat", "POST"
            row[idx["path"]] = f"/{upstream}/v1/chat/completions"
            row[idx["request_model"]] = row[idx["response_model"]] = row[idx["model"]] = model
            row[idx["stream"]], row[idx["status_code"]] = 1, 200
            row[idx["outcome"]] = "ok" if rng.random() < 0.97 else "upstream_error"
            row[idx["input_tokens"]], row[idx["output_tokens"]] = inp, out_t
            row[idx["cache_read_tokens"]] = row[idx["cache_write_tokens"]] = 0
            row[idx["reasoning_tokens"]], row[idx["total_tokens"]] = 0, inp + out_t
            row[idx["usage_source"]] = "reported"
            row[idx["cost_usd"]] = (inp * 2.5 + out_t * 10) / 1e6
            row[idx["list_cost_usd"]] = row[idx["cost_usd"]]  # no adjustment
            row[idx["price_source"]] = "genai-prices"
            row[idx["agent"]] = agent
            row[idx["session"]] = f"s-{i // 40}"
            row[idx["tags"]] = f'{{"agent":"{agent}","session":"s-{i // 40}"}}'
            row[idx["client"]] = "openai-python"
            out.append(tuple(row))
        yield out


async def load(target: str, n: int) -> float:
    backend = open_backend(target)
    await backend.open()
    t0 = time.perf_counter()
    done = 0
    try:
        for batch in rows(n):
            await backend.write(batch)
            done += len(batch)
            print(f"\r  loaded {done:,}/{n:,}", end="", flush=True)
        print()
    finally:
        await backend.aclose()
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(cmd: list[str], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


async def api_time(port: int, rounds: int = 3) -> float:
    import aiohttp

    from bench.run import wait_ready

    async with aiohttp.ClientSession() as s:
        await wait_ready(s, port)
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            async with s.get(f"http://127.0.0.1:{port}/api/usage?group_by=agent"
                             f"&since=30d") as r:
                assert r.status == 200, await r.text()
                await r.read()
            best = min(best, time.perf_counter() - t0)
        return best


def bench(label: str, target: str, n: int, tmp: Path) -> None:
    print(f"[{label}] writing {n:,} rows over 90 days ...")
    secs = asyncio.run(load(target, n))
    print(f"[{label}] loaded in {secs:.0f} s ({n / secs:,.0f} rows/s, roll-up included)")
    cfg = tmp / f"{label}.yaml"
    key = "url" if target.startswith("postgresql") else "path"
    cfg.write_text(f"ledger: {{{key}: '{target}'}}\n")
    base = [sys.executable, "-m", "proxy"]
    floor = timed([*base, "--version"])
    for args in (["report", "--by", "agent,model", "--since", "30d"],
                 ["report", "--by", "day", "--since", "90d"]):
        t = timed([*base, *args, "--config", str(cfg)])
        print(f"[{label}] tokenbooth {' '.join(args)}: {t:.3f} s "
              f"(the bare `tokenbooth --version` process: {floor:.3f} s)")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(cfg),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        print(f"[{label}] GET /api/usage?group_by=agent&since=30d: "
              f"{asyncio.run(api_time(port)):.3f} s")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tb-report-"))
    os.chdir(tmp)
    if args.backend in ("sqlite", "both"):
        bench("sqlite", str(tmp / "big.db"), args.rows, tmp)
    if args.backend in ("postgresql", "both"):
        from bench.pg import postgres_url

        with postgres_url(args.pg_url, "report_bench") as url:
            bench("postgresql", url, args.rows, tmp)


if __name__ == "__main__":
    main()
