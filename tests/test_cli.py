"""The `tokenbooth` command: `serve` when it cannot start, `prices`, `check-config`, and
the ledger a `--db` names."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main

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


def test_prices_are_readable_with_tiers_and_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "claude-sonnet-4-5", "--upstream", "anthropic"]) == 0
    out = capsys.readouterr().out
    assert "input: $3 per million tokens; above 200,000 input tokens: $6" in out
    assert "web searches: $10 per 1,000 web searches" in out
    assert "when processing batch:" in out and "Decimal" not in out and "Tier(" not in out
    assert main(["prices", "gpt-5", "--upstream", "openai", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prices"]["input"] == "$1.25 per million tokens"
    assert doc["variants"]["service_tier flex"]["input"] == "$0.625 per million tokens"


def test_prices_finds_a_model_as_the_ledger_prices_it_without_upstream(
        capsys: pytest.CaptureFixture[str]) -> None:
    # an embedding model no provider claims by name: the ledger prices it through the
    # openai upstream, and so does `prices` without --upstream (OpenAI: $0.02 per million)
    assert main(["prices", "text-embedding-3-small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("text-embedding-3-small (openai):")
    assert "input: $0.02 per million tokens" in out
    assert main(["prices", "gpt-4o", "--upstream", "nosuch"]) == 2
    assert "unknown upstream 'nosuch'" in capsys.readouterr().err


def test_check_config_prints_the_estimation_factors_it_applies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("estimation: {factors: {gemini: 1.1}}\n")
    assert main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    factors = out.split("factors:")[1].split("budgets")[0]
    assert "anthropic: 1.2" in factors and "gemini: 1.1" in factors and "openai: 1.0" in factors


def test_a_db_of_no_backend_is_a_clear_error_not_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for command in (["report"], ["calls"], ["serve"], ["copy-ledger", "--to", "x.db"]):
        assert main([*command, "--db", "mysql://x/tb"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["tokenbooth: config error: --db: 'mysql://x/tb': no ledger backend "
                       "for mysql:// (known: sqlite, postgresql); use sqlite:///<path> or a "
                       "file path or postgresql://user:pass@host:5432/db"]
    assert list(tmp_path.iterdir()) == []  # no `mysql:` directory, no ledger file
    (tmp_path / "source.db").touch()
    assert main(["copy-ledger", "--db", "source.db", "--to", "mysql://x/tb"]) == 2
    assert capsys.readouterr().err.startswith("tokenbooth: --to: 'mysql://x/tb': no ledger "
                                              "backend for mysql://")
    assert [p.name for p in tmp_path.iterdir()] == ["source.db"]
