"""Load driver: direct vs the bare floor vs Tokenbooth, on the same fake upstream.

Both proxies sit on CPU 0 (only the one under load uses it); the fake upstream and this
driver share CPU 1. For each scenario and concurrency, direct, floor and Tokenbooth run back
to back, `--rounds` times, and it prints medians of the proxy's CPU microseconds per request
(all threads, from /proc/<pid>/task/*/schedstat), added latency p50/p99 against direct,
added first-chunk latency for streams, and at the end each proxy's peak RSS (VmHWM). The
level `max` drives MAX_CONCURRENCY clients at once, the proxy's heaviest load; each level
also reports calls per second achieved and, in the summary, the calls per second one core
sustains at that CPU cost (1e6 / µs per call).

The scenario `admission` is measured in process instead (`bench/admission_bench.py`): the
CPU admission adds per call with a consumer key's limits, a rate limit and a budget on a
SQLite ledger, against none.

    python -m bench.run [--quick] [--rounds N] [--levels 1,16,64,max]
    python -m bench.run --scenarios admission
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).parent
MAX_CONCURRENCY = 256  # level `max`: the proxy's core saturates (calls/s is its throughput)
TICK = os.sysconf("SC_CLK_TCK")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Capital of Portugal?"}]}
SCENARIOS = {
    "chat_json": ("openai", "v1/chat/completions", CHAT),
    "chat_sse": ("openai", "v1/chat/completions", {**CHAT, "stream": True}),
    "anthropic_sse": ("anthropic", "v1/messages", {"model": "claude-sonnet-4-20250514",
                                                    "max_tokens": 100, "stream": True,
                                                    "messages": CHAT["messages"]}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], cpu: int, cwd: str | None = None) -> subprocess.Popen[bytes]:
    cpus = os.sched_getaffinity(0)
    pin = {cpu} if cpu in cpus else cpus
    return subprocess.Popen(args, preexec_fn=lambda: os.sched_setaffinity(0, pin), cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, in ns precision from schedstat (stat ticks are
    10 ms, too coarse for a few hundred requests); falls back to /proc/<pid>/stat."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_port(port: int, seconds: float = 10.0) -> None:
    for _ in range(round(seconds / 0.05)):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


async def wait_ready(s: aiohttp.ClientSession, port: int) -> None:
    """Until the proxy on `port` answers /readyz with 200 (30 s at most)."""
    for _ in range(300):
        try:
            async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the proxy on {port} was not ready within 30 s")


async def one(session: aiohttp.ClientSession, url: str, body: dict[str, object]
              ) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    async with session.post(url, json=body) as r:
        async for _ in r.content.iter_any():
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return end - t0, (first or end) - t0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(url: str, scenario: str, pid: int | None, conc: int,
                  n: int) -> dict[str, float | None]:
    c0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    res = await load_url(url, scenario, conc, n)
    wall = time.perf_counter() - t0
    c1 = cpu_seconds(pid) if pid else 0.0
    lat = [r[0] for r in res]
    first = [r[1] for r in res]
    return {"cpu_us_per_req": (c1 - c0) / n * 1e6 if pid else None,
            "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "first_p50_ms": pct(first, 0.5) * 1e3, "mean_ms": statistics.fmean(lat) * 1e3,
            "calls_per_s": n / wall}


def median_of(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    return {k: (statistics.median(r[k] for r in runs) if runs[0][k] is not None else None)
            for k in runs[0]}


async def measure_all(targets: dict[str, tuple[dict[str, str], int | None]], levels: list[int],
                      per_level: dict[int, int], rounds: int) -> dict[str, dict[str, object]]:
    """Each scenario and level runs direct, floor, tokenbooth back to back, `rounds` times
    (medians kept): the machine's drift then hits all three alike."""
    out: dict[str, dict[str, object]] = {name: {} for name in targets}
    for scenario, (up, path, _) in SCENARIOS.items():
        for base_for, _pid in targets.values():  # warm-up: connections, caches, encodes
            await load_url(f"{base_for[up]}/{path}", scenario, 4, 40)
        for conc in levels:
            runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, (base_for, pid) in targets.items():
                    runs[name].append(await measure(f"{base_for[up]}/{path}", scenario, pid,
                                                    conc, per_level[conc]))
            for name in targets:
                m = median_of(runs[name])
                level = "max" if conc == MAX_CONCURRENCY else conc
                out[name][f"{scenario}@{level}"] = {"n": per_level[conc], "rounds": rounds,
                                                    **m}
                cpu = m["cpu_us_per_req"]
                print(f"  {name:10s} {scenario:14s} c={conc:<3d} p50={m['p50_ms']:7.2f}ms "
                      f"p99={m['p99_ms']:7.2f}ms first={m['first_p50_ms']:6.2f}ms "
                      f"{m['calls_per_s']:6.0f}/s "
                      + (f"cpu={cpu:7.0f}us/req" if cpu is not None else ""), flush=True)
    for name, (_, pid) in targets.items():
        if pid:
            out[name]["peak_rss_mib"] = peak_rss_mib(pid)
    return out


async def load_url(url: str, scenario: str, conc: int, n: int) -> list[tuple[float, float]]:
    body = SCENARIOS[scenario][2]
    results: list[tuple[float, float]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        counter = iter(range(n))

        async def worker() -> None:
            for _ in counter:
                results.append(await one(s, url, body))

        await asyncio.gather(*(worker() for _ in range(conc)))
    return results


async def main_async(quick: bool, levels: list[int], scenarios: list[str],
                     rounds: int, before: str | None = None,
                     postgres: str | None = None, otel: bool = False) -> None:
    if "admission" in scenarios:  # in process: what admission adds per call
        from bench.admission_bench import main_async as admission

        await admission(5_000 if quick else 20_000, 256, max(rounds, 3))
        scenarios = [s for s in scenarios if s != "admission"]
        if not scenarios:
            return
    for name in list(SCENARIOS):
        if name not in scenarios:
            del SCENARIOS[name]
    per_level = {1: 60, 16: 320, 64: 640, MAX_CONCURRENCY: 1536} if quick else \
        {1: 150, 16: 800, 64: 1600, MAX_CONCURRENCY: 3840}
    os.sched_setaffinity(0, {1} if 1 in os.sched_getaffinity(0) else os.sched_getaffinity(0))
    up_port, floor_port, tb_port = free_port(), free_port(), free_port()
    upstream = spawn([sys.executable, str(HERE / "fake_upstream.py"), str(up_port)], cpu=1)
    procs = [upstream]
    tmp = tempfile.mkdtemp(prefix="tb-bench-")
    cfg = Path(tmp) / "config.yaml"
    cfg.write_text(
        f"upstreams:\n  openai: {{url: 'http://127.0.0.1:{up_port}'}}\n"
        f"  anthropic: {{url: 'http://127.0.0.1:{up_port}'}}\n"
        f"ledger: {{path: '{tmp}/bench.db'}}\n"
        # full metering: a blocking budget every call matches (admission reserves each
        # call's worst case, the record settles it); never reached
        "budgets:\n  - {name: bench, match: {}, limit_usd: 1000000000, window: day, "
        "action: block}\n")
    try:
        direct = f"http://127.0.0.1:{up_port}"
        # Both proxies on CPU 0; only the one under load uses it at any time.
        floor = spawn([sys.executable, str(HERE / "floor_proxy.py"), str(floor_port), direct],
                      cpu=0)
        tb = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--port",
                    str(tb_port)], cpu=0, cwd=str(HERE.parent))
        procs += [floor, tb]
        ports = [up_port, floor_port, tb_port]
        if before:  # an earlier checkout of the proxy, measured in the same rounds
            before_port = free_port()
            cfg_before = Path(tmp) / "before.yaml"
            cfg_before.write_text(cfg.read_text().replace("bench.db", "before.db"))
            procs.append(spawn([sys.executable, "-m", "proxy", "serve", "--config",
                                str(cfg_before), "--port", str(before_port)], cpu=0,
                               cwd=before))
            before_pid = procs[-1].pid
            ports.append(before_port)
        pg_server = None
        if postgres is not None:  # the same proxy on a PostgreSQL ledger, same rounds
            if postgres == "local":
                from bench.pg import PgServer

                pg_server = PgServer()
                postgres = pg_server.create_database("run_bench")
            pg_port = free_port()
            cfg_pg = Path(tmp) / "postgres.yaml"
            cfg_pg.write_text(cfg.read_text().replace(
                f"ledger: {{path: '{tmp}/bench.db'}}",
                f"ledger: {{url: '{postgres}', path: '{tmp}/pg/bench.db'}}"))
            procs.append(spawn([sys.executable, "-m", "proxy", "serve", "--config",
                                str(cfg_pg), "--port", str(pg_port)], cpu=0,
                               cwd=str(HERE.parent)))
            ports.append(pg_port)
        otel_targets: dict[str, tuple[int, int]] = {}
        if otel:  # the same proxy exporting OTLP to a local receiver: metrics only, and both
            otlp_port = free_port()
            procs.append(spawn([sys.executable, str(HERE / "otlp_receiver.py"),
                                str(otlp_port)], cpu=1))
            ports.append(otlp_port)
            for name, spans in (("otel-metrics", "false"), ("otel", "true")):
                cfg_otel = Path(tmp) / f"{name}.yaml"
                cfg_otel.write_text(cfg.read_text().replace("bench.db", f"{name}.db") + (
                    f"otel: {{endpoint: 'http://127.0.0.1:{otlp_port}', metrics: true, "
                    f"spans: {spans}, export_interval_seconds: 10}}\n"))
                port = free_port()
                procs.append(spawn([sys.executable, "-m", "proxy", "serve", "--config",
                                    str(cfg_otel), "--port", str(port)], cpu=0,
                                   cwd=str(HERE.parent)))
                otel_targets[name] = (port, procs[-1].pid)
                ports.append(port)
        for port in ports:
            await wait_port(port)
        await asyncio.sleep(1.0)  # vocabularies load off the loop at start-up
        fb, tbb = f"http://127.0.0.1:{floor_port}/x", f"http://127.0.0.1:{tb_port}"
        print(f"direct / bare floor (aiohttp + uvloop pass-through) / tokenbooth (usage, "
              f"ledger, metrics, a blocking budget on); medians of {rounds} interleaved "
              f"round(s):", flush=True)
        targets = {
            "direct": ({"openai": direct, "anthropic": direct}, None),
            "floor": ({"openai": fb, "anthropic": fb}, floor.pid),
            "tokenbooth": ({"openai": f"{tbb}/openai", "anthropic": f"{tbb}/anthropic"},
                           tb.pid),
        }
        if before:
            bb = f"http://127.0.0.1:{before_port}"
            targets["before"] = ({"openai": f"{bb}/openai", "anthropic": f"{bb}/anthropic"},
                                 before_pid)
        if postgres is not None:
            pb = f"http://127.0.0.1:{pg_port}"
            targets["postgresql"] = ({"openai": f"{pb}/openai", "anthropic": f"{pb}/anthropic"},
                                     procs[-1].pid)
        for name, (port, pid) in otel_targets.items():
            ob = f"http://127.0.0.1:{port}"
            targets[name] = ({"openai": f"{ob}/openai", "anthropic": f"{ob}/anthropic"}, pid)
        results = await measure_all(targets, levels, per_level, rounds)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        if postgres is not None and pg_server is not None:
            pg_server.close()
    summarize(results)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2))


def summarize(results: dict[str, dict[str, object]]) -> None:
    d, f, t = (results[k] for k in ("direct", "floor", "tokenbooth"))
    print("\nsummary (added = through the proxy minus direct):")
    print(f"{'case':22s} {'floor cpu':>10s} {'tb cpu':>9s} {'ratio':>6s} "
          f"{'tb +p50':>8s} {'tb +p99':>8s} {'floor +p50':>10s} {'tb +first':>9s} "
          f"{'1-core calls/s floor':>20s} {'tb':>5s}")
    ratios = []
    for key in d:
        fc, tc = f[key]["cpu_us_per_req"], t[key]["cpu_us_per_req"]
        ratios.append(tc / fc)
        print(f"{key:22s} {fc:8.0f}us {tc:7.0f}us {tc / fc:6.2f} "
              f"{t[key]['p50_ms'] - d[key]['p50_ms']:6.2f}ms "
              f"{t[key]['p99_ms'] - d[key]['p99_ms']:6.2f}ms "
              f"{f[key]['p50_ms'] - d[key]['p50_ms']:8.2f}ms "
              f"{t[key]['first_p50_ms'] - d[key]['first_p50_ms']:7.2f}ms "
              f"{1e6 / fc:20.0f} {1e6 / tc:5.0f}")
    print(f"\nCPU ratio tokenbooth/floor: mean {statistics.fmean(ratios):.2f}, "
          f"max {max(ratios):.2f}")
    geo = statistics.geometric_mean(t[k]["cpu_us_per_req"] for k in d)
    print(f"geo-mean CPU per request: floor "
          f"{statistics.geometric_mean(f[k]['cpu_us_per_req'] for k in d):.0f}us, "
          f"tokenbooth {geo:.0f}us")
    if "before" in results:
        b = results["before"]
        geo_b = statistics.geometric_mean(b[k]["cpu_us_per_req"] for k in d)
        print(f"before (--before checkout, same rounds): geo-mean {geo_b:.0f}us; "
              f"tokenbooth/before {geo / geo_b:.3f}")
        for key in d:
            print(f"  {key:20s} before {b[key]['cpu_us_per_req']:7.0f}us "
                  f"({b[key]['cpu_us_per_req'] / f[key]['cpu_us_per_req']:.2f}x floor)")
    if "postgresql" in results:
        pg = results["postgresql"]
        geo_pg = statistics.geometric_mean(pg[k]["cpu_us_per_req"] for k in d)
        print(f"PostgreSQL ledger (same proxy, same rounds): geo-mean {geo_pg:.0f}us; "
              f"postgresql/sqlite {geo_pg / geo:.3f}")
        for key in d:
            print(f"  {key:20s} postgresql {pg[key]['cpu_us_per_req']:7.0f}us, sqlite "
                  f"{t[key]['cpu_us_per_req']:7.0f}us "
                  f"({pg[key]['cpu_us_per_req'] / t[key]['cpu_us_per_req']:.3f})")
    for name in ("otel-metrics", "otel"):
        if name not in results:
            continue
        o = results[name]
        geo_o = statistics.geometric_mean(o[k]["cpu_us_per_req"] for k in d)
        what = "OTLP metrics" if name == "otel-metrics" else "OTLP metrics and spans"
        print(f"{what} on (same proxy, same rounds): geo-mean {geo_o:.0f}us; "
              f"{name}/off {geo_o / geo:.3f}")
        for key in d:
            print(f"  {key:20s} {name} {o[key]['cpu_us_per_req']:7.0f}us, off "
                  f"{t[key]['cpu_us_per_req']:7.0f}us "
                  f"({o[key]['cpu_us_per_req'] / t[key]['cpu_us_per_req']:.3f})")
        print(f"  peak RSS {o['peak_rss_mib']:.0f} MiB")
    print(f"peak RSS: floor {f['peak_rss_mib']:.0f} MiB, tokenbooth {t['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument("--levels", default="1,16,64,max",
                        help="concurrency levels; `max` saturates the proxy's core")
    parser.add_argument("--scenarios", default=",".join([*SCENARIOS, "admission"]),
                        help="chat_json, chat_sse, anthropic_sse (through the proxy), "
                             "admission (in process: CPU added per call)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per level; medians are reported")
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="another checkout of this repository (e.g. a git worktree of the "
                             "previous release) measured in the same rounds, for comparison")
    parser.add_argument("--postgres", nargs="?", const="local", metavar="URL",
                        help="also measure the proxy on a PostgreSQL ledger in the same rounds "
                             "(an empty database URL; default: a throwaway local cluster)")
    parser.add_argument("--otel", action="store_true",
                        help="also measure the proxy exporting OTLP metrics and spans (to a "
                             "local receiver, bench/otlp_receiver.py) in the same rounds")
    a = parser.parse_args()
    asyncio.run(main_async(a.quick, [MAX_CONCURRENCY if x == "max" else int(x)
                                     for x in a.levels.split(",")],
                           a.scenarios.split(","), a.rounds, a.before, a.postgres, a.otel))
