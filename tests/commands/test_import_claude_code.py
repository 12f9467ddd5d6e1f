"""`tokenbooth import claude-code`: what is not a transcript file is skipped, and an
imported call is the record the proxy's own builder makes of its facts."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.cli import main
from proxy.record import COLUMNS
from tests.conftest import FakeUpstream, Proxy, Reply

ROOT = Path(__file__).resolve().parent.parent.parent


def test_import_skips_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """A link to /dev/zero would be read forever, a FIFO would block on open: each is
    skipped and said so, and the real transcript beside them is imported."""
    root = tmp_path / "projects" / "-work-repo"
    root.mkdir(parents=True)
    (root / "zero.jsonl").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.jsonl")
    (root / "real.jsonl").write_text(json.dumps({
        "type": "assistant", "sessionId": "s1", "requestId": "req_1",
        "timestamp": "2026-11-29T10:00:00.000Z",
        "message": {"id": "msg_1", "model": "claude-sonnet-4-20250514",
                    "usage": {"input_tokens": 10, "output_tokens": 2}}}) + "\n")
    db = tmp_path / "l.db"
    done = subprocess.run(  # a process: if it blocked, the timeout ends it and the test fails
        [sys.executable, "-m", "proxy", "import", "claude-code", str(tmp_path / "projects"),
         "--db", str(db)], capture_output=True, text=True, timeout=60,
        cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "imported 1 call(s) from 1 file(s)" in done.stdout
    assert "2 path(s) not a regular file" in done.stdout
    assert "zero.jsonl: not a regular file, skipped" in done.stderr
    assert "pipe.jsonl: not a regular file, skipped" in done.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT upstream_request_id FROM llm_usage").fetchall() == [("msg_1",)]
    conn.close()


async def test_an_imported_call_is_the_row_the_proxy_writes_for_the_same_response(
        proxy: Proxy, upstream: FakeUpstream, tmp_path: Path) -> None:
    """One builder: the same Anthropic answer, proxied or read from Claude Code's
    transcript, gives the same tokens, cost, model and raw usage; only who, when and how
    it was seen differ. Input reported without cache fields is input with no cache (0),
    for both, not unknown."""
    usage = {"input_tokens": 1200, "output_tokens": 300,
             "server_tool_use": {"web_search_requests": 2}}
    message = {"id": "msg_same", "type": "message", "role": "assistant",
               "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": "ok"}],
               "stop_reason": "end_turn", "usage": usage}
    upstream.on("/v1/messages", Reply([json.dumps(message).encode()]))
    async with aiohttp.ClientSession() as s, s.post(
            f"{proxy.url}/anthropic/v1/messages",
            json={"model": "claude-sonnet-4-5", "max_tokens": 9,
                  "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
        await r.read()
    live = dict(zip(COLUMNS, (await proxy.collector.wait_for(1))[0].to_row(), strict=True))

    root = tmp_path / "projects" / "-work-repo"
    root.mkdir(parents=True)
    (root / "s1.jsonl").write_text(json.dumps({
        "type": "assistant", "sessionId": "s1", "requestId": "req_same",
        "timestamp": "2026-11-29T10:00:00.000Z",
        "message": {**message, "usage": usage}}) + "\n")
    db = str(tmp_path / "imported.db")
    assert main(["import", "claude-code", str(tmp_path / "projects"), "--db", db]) == 0
    conn = sqlite3.connect(db)
    try:
        imported = dict(zip(COLUMNS, conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM llm_usage").fetchone(), strict=True))
    finally:
        conn.close()

    # claude-sonnet-4-5: $3 per million input, $15 per million output, $10 per 1,000 web
    # searches: 1200 * 3 / 1e6 + 300 * 15 / 1e6 + 2 * 10 / 1000 = 0.0036 + 0.0045 + 0.02
    assert live["cost_usd"] == imported["cost_usd"] == pytest.approx(0.0281)
    assert imported["cache_read_tokens"] == imported["cache_write_tokens"] == 0
    assert imported["usage_source"] == "client_log" and live["usage_source"] == "reported"
    assert imported["started_at"] == imported["ended_at"] == "2026-11-29T10:00:00.000Z"
    assert imported["upstream_request_id"] == live["upstream_request_id"] == "msg_same"
    how_seen = {"call_id", "started_at", "ended_at", "duration_ms", "ttft_ms", "status_code",
                "usage_source", "agent", "session", "tags", "client", "key_id"}
    assert {k: v for k, v in imported.items() if k not in how_seen} == \
        {k: v for k, v in live.items() if k not in how_seen}
