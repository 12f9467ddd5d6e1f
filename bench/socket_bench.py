"""Realtime sockets through `tokenbooth serve`: N sockets, each sending audio appends at F
frames a second for S seconds to a fake Realtime upstream that echoes each one back as an
audio delta. Reports frames lost or reordered (none expected), the round trip's p50 and p99
through the proxy against the same sockets straight to the upstream (the proxy's added
latency per frame is half the difference: one pass each way), the proxy's CPU (share of one
core) and its RSS growth.

    python -m bench.socket_bench --sockets 200 --fps 50 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.run import wait_port, wait_ready

AUDIO = base64.b64encode(os.urandom(960)).decode()  # 20 ms of 24 kHz pcm16


async def _upstream(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    await ws.send_str(json.dumps({"type": "session.created", "session": {
        "object": "realtime.session", "id": "sess_b", "model": "gpt-realtime"}}))
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:  # back as an audio delta of the same size
            await ws.send_str(msg.data.replace("input_audio_buffer.append",
                                               "response.output_audio.delta", 1))
    return ws


async def _serve_upstream(port: int) -> None:
    """The fake upstream alone (its own process: the load generator needs the other core)."""
    app = web.Application()
    app.router.add_get("/v1/realtime", _upstream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one(session: aiohttp.ClientSession, url: str, fps: int, seconds: float,
               rtts: list[float]) -> tuple[int, int, int]:
    """(sent, received, out of order) for one socket."""
    async with session.ws_connect(url, max_msg_size=0) as ws:
        await ws.receive()  # session.created
        n = int(fps * seconds)
        got = disorder = 0
        last = -1

        async def reader() -> None:
            nonlocal got, disorder, last
            while got < n:
                msg = await ws.receive(timeout=30)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return
                head = msg.data[:120].split(",")  # the type, then seq and t: no JSON parse
                seq, sent = int(head[1][6:]), float(head[2][4:])
                rtts.append(time.perf_counter() - sent)
                disorder += seq != last + 1
                last = seq
                got += 1

        task = asyncio.ensure_future(reader())
        start = time.perf_counter()
        for seq in range(n):
            await ws.send_str(f'{{"type":"input_audio_buffer.append","seq":{seq},'
                              f'"t":{time.perf_counter()!r},"audio":"{AUDIO}"}}')
            delay = start + (seq + 1) / fps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await task
        return n, got, disorder


async def _run(url: str, sockets: int, fps: int, seconds: float) -> dict[str, float]:
    rtts: list[float] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        results = await asyncio.gather(*(_one(s, url, fps, seconds, rtts)
                                         for _ in range(sockets)))
    sent = sum(r[0] for r in results)
    got = sum(r[1] for r in results)
    rtts.sort()
    return {"sent": sent, "lost": sent - got, "reordered": sum(r[2] for r in results),
            "p50_ms": statistics.median(rtts) * 1000, "p99_ms": rtts[int(len(rtts) * .99)] * 1000}


def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=200)
    ap.add_argument("--fps", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--upstream-only", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.upstream_only:
        await _serve_upstream(args.upstream_only)
        return 0
    up_port = _port()
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.socket_bench", "--upstream-only", str(up_port))
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(f"upstreams: {{openai: {{url: 'http://127.0.0.1:{up_port}'}}}}\n"
                       f"ledger: {{path: '{tmp}/l.db'}}\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--port", str(port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as s:
                await wait_ready(s, port)
            await wait_port(up_port, seconds=30)  # and the upstream's process
            q = "model=gpt-realtime"
            direct = await _run(f"ws://127.0.0.1:{up_port}/v1/realtime?{q}", args.sockets,
                                args.fps, min(args.seconds, 10))
            cpu0, rss0 = _proc_stats(proc.pid)
            t0 = time.monotonic()
            proxied = await _run(f"ws://127.0.0.1:{port}/openai/v1/realtime?{q}",
                                 args.sockets, args.fps, args.seconds)
            cpu1, rss1 = _proc_stats(proc.pid)
            wall = time.monotonic() - t0
        finally:
            for p in (proc, upstream):
                p.terminate()
                await p.wait()
    print(f"sockets {args.sockets} x {args.fps} frames/s x {args.seconds:g} s "
          f"(each frame echoed back)")
    print(f"direct:  p50 {direct['p50_ms']:.2f} ms, p99 {direct['p99_ms']:.2f} ms round trip")
    print(f"proxied: p50 {proxied['p50_ms']:.2f} ms, p99 {proxied['p99_ms']:.2f} ms round trip;"
          f" sent {proxied['sent']:.0f}, lost {proxied['lost']:.0f}, "
          f"reordered {proxied['reordered']:.0f}")
    print(f"added per frame (one pass): p50 {(proxied['p50_ms'] - direct['p50_ms']) / 2:.3f} ms")
    print(f"proxy CPU {100 * (cpu1 - cpu0) / wall:.0f}% of one core; RSS {rss0 >> 20} MiB -> "
          f"{rss1 >> 20} MiB (+{(rss1 - rss0) >> 20} MiB)")
    return 0 if proxied["lost"] == 0 and proxied["reordered"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
