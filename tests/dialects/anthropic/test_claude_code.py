"""`tokenbooth import claude-code`: one row per API call from Claude Code's transcripts
(counted once across the lines that repeat it), sub-agents attributed, priced by hand,
calls the proxy already metered skipped, bad lines reported, a second import adds nothing."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.sinks.ledger import Ledger
from tests.factories import make_record

M = Decimal(1_000_000)
SESSION = "5b0f3a52-1111-4c4c-9d9d-0123456789ab"


def assistant(mid: str, req: str, usage: dict[str, object], *, side: bool = False,
              text: str = "x") -> str:
    return json.dumps({
        "type": "assistant", "sessionId": SESSION, "requestId": req, "isSidechain": side,
        "timestamp": "2026-11-29T10:00:00.000Z", **({"agentId": "a1b2"} if side else {}),
        "message": {"id": mid, "type": "message", "role": "assistant",
                    "model": "claude-sonnet-4-20250514",
                    "content": [{"type": "text", "text": text}], "usage": usage}})


@pytest.fixture
def transcripts(tmp_path: Path) -> Path:
    root = tmp_path / "projects" / "-work-repo"
    (root / SESSION / "subagents").mkdir(parents=True)
    u1 = {"input_tokens": 10, "cache_creation_input_tokens": 2000,
          "cache_read_input_tokens": 5000, "output_tokens": 300,
          "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 0}}
    (root / f"{SESSION}.jsonl").write_text("\n".join([
        json.dumps({"type": "user", "sessionId": SESSION, "message": {"role": "user",
                                                                     "content": "hi"}}),
        assistant("msg_A", "req_A", u1, text="thinking"),  # one call, two content blocks:
        assistant("msg_A", "req_A", u1, text="answer"),   # its usage repeats
        assistant("msg_B", "req_B", {"input_tokens": 50, "output_tokens": 5}),
        "{ not json",
        # the Agent tool's result repeats the sub-agent's usage: not a call
        json.dumps({"type": "user", "sessionId": SESSION, "toolUseResult": {
            "totalTokens": 999, "usage": {"input_tokens": 900, "output_tokens": 99}}}),
        assistant("msg_P", "req_P", {"input_tokens": 7, "output_tokens": 7}),
    ]) + "\n")
    (root / SESSION / "subagents" / "agent-a1b2.jsonl").write_text(
        assistant("msg_S", "req_S", {"input_tokens": 100, "output_tokens": 40}, side=True)
        + "\n")
    return tmp_path / "projects"


async def test_import_then_again(transcripts: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "l.db")
    ledger = Ledger(db, flush_seconds=0.01)  # the proxy metered msg_P already
    await ledger.open()
    await ledger.handle(make_record(call_id="proxied", upstream="anthropic",
                                    upstream_request_id="msg_P"))
    await ledger.flush()
    await ledger.aclose()
    assert main(["import", "claude-code", str(transcripts), "--db", db]) == 0
    out = capsys.readouterr()
    assert "imported 3 call(s) from 2 file(s) in 1 session(s)" in out.out
    assert "skipped 1 already metered" in out.out and "1 unreadable line" in out.out
    assert "not JSON" in out.err
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {r["upstream_request_id"]: r for r in conn.execute(
        "SELECT * FROM llm_usage WHERE usage_source = 'client_log'")}
    conn.close()
    assert set(rows) == {"msg_A", "msg_B", "msg_S"}
    a = rows["msg_A"]
    assert (a["input_tokens"], a["cache_read_tokens"], a["cache_write_tokens"],
            a["output_tokens"]) == (7010, 5000, 2000, 300)
    # Sonnet 4: $3 in, $0.30 cache read, $3.75 5-minute cache write, $15 out per million
    assert Decimal(repr(a["cost_usd"])) == (10 * 3 + 5000 * Decimal("0.3")
                                            + 2000 * Decimal("3.75") + 300 * 15) / M
    assert a["session"] == SESSION and a["agent"] == "claude-code"
    assert a["started_at"] == "2026-11-29T10:00:00.000Z"
    assert json.loads(rows["msg_S"]["tags"])["claude_code_agent"] == "a1b2"
    assert main(["import", "claude-code", str(transcripts), "--db", db]) == 0
    again = capsys.readouterr().out
    assert "imported 0 call(s)" in again and "3 imported before" in again
