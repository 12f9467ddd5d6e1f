"""`tokenbooth calls`: the recent calls of a session or agent, newest first."""

from __future__ import annotations

import json

import pytest

from proxy.cli import main


def test_calls_for_a_session(ledger_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calls", "--db", ledger_db, "--session", "s1", "--limit", "3",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 3 and all(r["session"] == "s1" for r in rows)
    assert rows[0]["started_at"] >= rows[1]["started_at"]
    assert main(["calls", "--db", ledger_db, "--agent", "ana"]) == 0
    assert "usage_source" in capsys.readouterr().out
