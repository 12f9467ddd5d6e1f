"""Python opcodes executed per call, floor against Tokenbooth: a figure that does not move
with the machine's load.

At low concurrency the proxy's CPU per call follows the Python it runs per call (and the
cache misses that code takes on a machine that idled between calls), so the opcode count is
what a change to the hot path should lower. Each proxy runs under a tracer that counts
opcodes per function while the driver sends a fixed number of calls (counting slows the
proxy ~20x; the count itself does not depend on timing, except for periodic tasks that
happen to run during the calls: keep `--calls` at 100 or more).

    python -m bench.opcodes [--scenario chat_json|chat_sse|anthropic_sse] [--calls 100]
                            [--top 25]

Counted: every opcode of the proxy process's main thread (the event loop), in our code,
aiohttp's and the standard library's; not C code (SQLite, tiktoken, json's C scanner) and
not other threads (the SQLite writer).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).parent


def launch(argv: list[str]) -> None:
    """In the proxy's process: count opcodes between SIGUSR1 and SIGUSR2 (written to
    $OPCODES_OUT as JSON), then run the proxy (`-m proxy ...` or a script path)."""
    counts: collections.Counter[Any] = collections.Counter()

    def local(frame: FrameType, event: str, _arg: object) -> Any:
        if event == "opcode":
            counts[frame.f_code] += 1
        return local

    def start(frame: FrameType, _event: str, _arg: object) -> Any:
        frame.f_trace_opcodes = True
        return local

    def stop(*_: object) -> None:
        sys.settrace(None)
        out: collections.Counter[str] = collections.Counter()
        for c, n in counts.items():
            # dataclasses' generated methods all read `<string>:2`: named by their fields
            where = f"({', '.join(c.co_varnames[1:4])}, ...)" if c.co_filename == "<string>" \
                else ""
            out[f"{c.co_filename}:{c.co_firstlineno}:{c.co_qualname}{where}"] += n
        Path(os.environ["OPCODES_OUT"]).write_text(json.dumps(out))

    signal.signal(signal.SIGUSR1, lambda *_: sys.settrace(start))
    signal.signal(signal.SIGUSR2, stop)
    import runpy

    if argv[0] == "-m":  # run from the repository root: this checkout's package
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


def _start(cmd: list[str], out: Path) -> subprocess.Popen[bytes]:
    """`cmd` under the counting launcher, from the repository root (`-m proxy` is then this
    checkout's)."""
    return subprocess.Popen([sys.executable, "-m", "bench.opcodes", "--launch", *cmd],
                            cwd=str(HERE.parent), env={**os.environ, "OPCODES_OUT": str(out)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def count(name: str, cmd: list[str], url: str, scenario: str,
                calls: int) -> dict[str, int]:
    from bench.run import load_url, wait_port

    out = Path(tempfile.mkdtemp(prefix="tb-opcodes-")) / f"{name}.json"
    proc = _start(cmd, out)
    try:
        await wait_port(int(url.split(":")[2].split("/")[0]))
        await asyncio.sleep(1.0)  # start-up work (vocabulary load) is over
        await load_url(url, scenario, 4, 40)  # warm: connections, caches
        proc.send_signal(signal.SIGUSR1)
        await load_url(url, scenario, 1, calls)
        proc.send_signal(signal.SIGUSR2)
        for _ in range(100):  # bounded: the process writes the file when signalled
            if out.exists() and out.stat().st_size:
                break
            await asyncio.sleep(0.05)
        return dict(json.loads(out.read_text()))
    finally:
        proc.terminate()
        proc.wait()


def _where(key: str) -> str:
    path = key.split(":")[0]
    if "/proxy/" in path and "site-packages" not in path:
        return "tokenbooth"
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0]
    return "stdlib"


async def main(args: argparse.Namespace) -> None:
    from bench.run import SCENARIOS, free_port, spawn

    up, floor_port, tb_port = free_port(), free_port(), free_port()
    upstream = spawn([sys.executable, str(HERE / "fake_upstream.py"), str(up)], cpu=1)
    tmp = tempfile.mkdtemp(prefix="tb-opcodes-")
    cfg = Path(tmp) / "config.yaml"
    cfg.write_text(  # the same as run.py's: ledger, metrics, a blocking budget
        f"upstreams:\n  openai: {{url: 'http://127.0.0.1:{up}'}}\n"
        f"  anthropic: {{url: 'http://127.0.0.1:{up}'}}\n"
        f"ledger: {{path: '{tmp}/bench.db'}}\n"
        "budgets:\n  - {name: bench, match: {}, limit_usd: 1000000000, window: day, "
        "action: block}\n")
    upname, path, _ = SCENARIOS[args.scenario]
    try:
        floor = await count("floor", [str(HERE / "floor_proxy.py"), str(floor_port),
                                      f"http://127.0.0.1:{up}"],
                            f"http://127.0.0.1:{floor_port}/x/{path}", args.scenario,
                            args.calls)
        tb = await count("tokenbooth", ["-m", "proxy", "serve", "--config", str(cfg),
                                        "--port", str(tb_port)],
                         f"http://127.0.0.1:{tb_port}/{upname}/{path}", args.scenario,
                         args.calls)
    finally:
        upstream.terminate()
        upstream.wait()
    n = args.calls
    f_total, t_total = sum(floor.values()) / n, sum(tb.values()) / n
    print(f"{args.scenario}, {n} calls one at a time: opcodes per call: floor {f_total:,.0f}, "
          f"tokenbooth {t_total:,.0f} ({t_total / f_total:.2f}x)")
    by: collections.Counter[str] = collections.Counter()
    for k, v in tb.items():
        by[_where(k)] += v
    print("tokenbooth by origin: " + ", ".join(f"{k} {v / n:,.0f}" for k, v in by.most_common()))
    if args.top:
        print(f"top {args.top} functions (opcodes per call):")
    root = str(HERE.parent) + "/"
    for k, v in sorted(tb.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v / n:8.1f}  {k.split('site-packages/')[-1].replace(root, '')}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--launch":
        launch(sys.argv[2:])
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--scenario", default="chat_json",
                            choices=("chat_json", "chat_sse", "anthropic_sse"))
        parser.add_argument("--calls", type=int, default=100)
        parser.add_argument("--top", type=int, default=25)
        asyncio.run(main(parser.parse_args()))
