"""A canary key and a canary prompt never reach the database, WAL, spool, logs or metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FakeUpstream, Proxy, Reply, served, wait_until

KEY = "sk-canary-KEY-7f3a9c"
PROMPT = "CANARY-PROMPT-the-owl-flies-at-midnight"


async def test_canaries_appear_nowhere(upstream: FakeUpstream, tmp_path: Path) -> None:
    echo = json.dumps({"error": {"message": f"Invalid prompt: {PROMPT}",
                                 "type": "invalid_request_error", "code": "bad"}}).encode()
    ok = json.dumps({"model": "gpt-4o", "choices": [{"message": {"content": PROMPT}}],
                     "usage": {"prompt_tokens": 9, "completion_tokens": 9}}).encode()
    db = tmp_path / "p.db"
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{db}', flush_seconds: 0.01}}\n")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}],
            "user": "end-user-1"}
    async with served(tmp_path, config) as (proc, port), aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {KEY}"}) as s:
        base = f"http://127.0.0.1:{port}"
        upstream.on("/v1/chat/completions", Reply([ok]))
        async with s.post(f"{base}/openai/v1/chat/completions", json=body) as r:
            assert r.status == 200
        upstream.on("/v1/chat/completions", Reply([echo], status=400))
        async with s.post(f"{base}/openai/v1/chat/completions", json=body) as r:
            assert r.status == 400
        # stream without usage: the prompt is estimated from, never stored
        upstream.on("/v1/chat/completions", Reply(
            [f'data: {{"choices":[{{"delta":{{"content":"{PROMPT}"}}}}]}}\n\n'.encode()],
            headers={"Content-Type": "text/event-stream"}))
        async with s.post(f"{base}/openai/v1/chat/completions",
                          json={**body, "stream": True}) as r:
            await r.read()
        await wait_until(lambda: row_count(db) == 3, what="3 rows in the ledger")
        locker = sqlite3.connect(db, timeout=0, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # force the spool path
        upstream.on("/v1/chat/completions", Reply([ok]))
        async with s.post(f"{base}/openai/v1/chat/completions", json=body) as r:
            assert r.status == 200
            spooled_id = r.headers["X-Meter-Call-Id"]
        spool = Path(f"{db}.spool")
        await wait_until(lambda: spool.exists() and spooled_id in spool.read_text(),
                         what="the locked-out row in the spool")
        spool_text = spool.read_text()
        locker.execute("ROLLBACK")
        locker.close()
        async with s.get(f"{base}/metrics") as r:
            metrics_text = await r.text()
        async with s.get(f"{base}/api/calls") as r:
            api_text = await r.text()
        os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    logs = (tmp_path / "served.log").read_text()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("p.db*") if p.is_file())
    assert b"llm_usage" in stored and len(logs) > 0 and "tokenbooth_requests" in metrics_text
    for canary in (KEY, PROMPT, "owl-flies"):
        assert canary.encode() not in stored
        assert canary not in spool_text
        assert canary not in logs
        assert canary not in metrics_text
        assert canary not in api_text
    conn = sqlite3.connect(db)
    try:
        n, keys = conn.execute("SELECT COUNT(*), COUNT(DISTINCT key_id) FROM llm_usage").fetchone()
    finally:
        conn.close()
    assert (n, keys) == (4, 1)


def row_count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM llm_usage").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet
        return 0
    finally:
        conn.close()


# Malformed requests are refused and logged without their bytes.
BAD = [
    b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-CANARY1"
    b"\r\nX-Bad\x01: CANARY2\r\nContent-Length: 7\r\n\r\nCANARY3",
    b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-CANARY4"
    b"\r\nTransfer-Encoding: chunked\r\n\r\nzzCANARY5\r\n",
    b"GET /openai/\x00CANARY6 HTTP/1.1\r\nHost: t\r\n\r\n",
]


async def test_malformed_requests_leave_no_bytes_in_the_log(proxy: Proxy,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    caplog.set_level(logging.DEBUG)
    for raw in BAD:
        reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert "CANARY" not in caplog.text
    refused = [r for r in caplog.records if r.getMessage().startswith("malformed request")]
    assert len(refused) == len(BAD) and all(r.exc_info is None for r in refused)
