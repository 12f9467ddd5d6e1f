"""The sans-IO core (framing, dialects, usage, record and its builder, estimate, pricing, the
meter, the endings table) passes `mypy --strict`, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ("proxy/framing", "proxy/dialects", "proxy/usage.py", "proxy/record.py",
        "proxy/estimate.py", "proxy/pricing.py", "proxy/meter.py", "proxy/outcome.py",
        "proxy/build.py", "proxy/value.py")


def test_the_core_is_what_mypy_checks() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert set(config["files"]) >= set(CORE)
    assert all((ROOT / path).exists() for path in config["files"])


def test_the_sans_io_core_passes_mypy_strict() -> None:
    # incremental: the cache (gitignored) makes a run after a small change take a second
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir",
                           str(ROOT / ".mypy_cache")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout, done.stdout
