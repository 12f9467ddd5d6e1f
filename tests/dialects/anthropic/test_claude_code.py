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
    ledger.observe(make_record(call_id="proxied", upstream="anthropic",
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


def line(mid: str, usage: dict[str, object], ts: str, model: str = "claude-sonnet-4-20250514",
         text: str = "x") -> str:
    return json.dumps({
        "type": "assistant", "sessionId": SESSION, "requestId": f"req_{mid}", "timestamp": ts,
        "message": {"id": mid, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": text}], "usage": usage}})


def test_a_streamed_message_is_imported_with_its_final_usage_and_errors_are_not_calls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "projects" / "-work-repo"
    root.mkdir(parents=True)
    grow = {"input_tokens": 3, "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 20000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 0}}
    zero = {"input_tokens": 0, "output_tokens": 0}
    (root / f"{SESSION}.jsonl").write_text("\n".join([
        # the streaming-partial shape: the same message's lines carry 1, 1, then 310 output
        line("msg_G", {**grow, "output_tokens": 1}, "2026-11-29T10:00:00.000Z", text="a"),
        line("msg_G", {**grow, "output_tokens": 1}, "2026-11-29T10:00:01.000Z", text="b"),
        line("msg_G", {**grow, "output_tokens": 310}, "2026-11-29T10:00:09.000Z", text="c"),
        # the placeholder Claude Code writes when the API call failed: not a call
        line("0d5c9a1e-synthetic", zero, "2026-11-29T10:01:00.000Z", model="<synthetic>",
             text="API Error: 529 overloaded"),
        # a time that does not parse is not stored: it would count in every window
        line("msg_J", {"input_tokens": 5, "output_tokens": 5}, "9999-99-99T99:99:99Z"),
        line("msg_F", {"input_tokens": 5, "output_tokens": 5}, "9999-12-31T00:00:00.000Z"),
        # an offset is stored as the ledger's UTC text
        line("msg_Z", {"input_tokens": 40, "output_tokens": 2}, "2026-11-29T12:30:00+02:00"),
    ]) + "\n")
    db = str(tmp_path / "l.db")
    assert main(["import", "claude-code", str(tmp_path / "projects"), "--db", db]) == 0
    out = capsys.readouterr()
    assert "imported 2 call(s)" in out.out and "2 unreadable line(s)" in out.out
    assert ":5: time does not parse, skipped" in out.err
    assert ":6: time in the future, skipped" in out.err
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {r["upstream_request_id"]: r for r in conn.execute("SELECT * FROM llm_usage")}
    conn.close()
    assert set(rows) == {"msg_G", "msg_Z"}
    g = rows["msg_G"]
    assert (g["input_tokens"], g["cache_read_tokens"], g["cache_write_tokens"],
            g["output_tokens"]) == (21003, 20000, 1000, 310)
    # Sonnet 4: $3 in, $0.30 cache read, $3.75 5-minute cache write, $15 out per million:
    # (3*3 + 20000*0.30 + 1000*3.75 + 310*15) / 1e6 = (9 + 6000 + 3750 + 4650) / 1e6
    assert Decimal(repr(g["cost_usd"])) == Decimal("0.014409")
    assert g["started_at"] == "2026-11-29T10:00:00.000Z"  # when its first line was written
    assert rows["msg_Z"]["started_at"] == "2026-11-29T10:30:00.000Z"
