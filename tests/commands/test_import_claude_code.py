"""`tokenbooth import claude-code`: what is not a transcript file is skipped."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

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

