"""The `tokenbooth serve` process: how it ends when it cannot start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_serve_on_a_busy_port_exits_1_at_once(tmp_path: Path) -> None:
    """Start-up (ledger writer, recorder) is undone when the listener cannot bind: a
    supervisor sees the process exit, not a live one that serves nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port),
             "--db", str(tmp_path / "l.db")],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"tokenbooth: cannot listen on 127.0.0.1:{port}: error while attempting to bind on "
        f"address ('127.0.0.1', {port}): address already in use"]
