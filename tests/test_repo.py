"""The repository itself: nothing large is committed by accident."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 1 << 20  # 1 MiB
SHIPPED = "proxy/data/"  # the tiktoken vocabularies ship with the package


def test_no_tracked_file_is_over_one_megabyte() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            check=True, timeout=60).stdout.decode()
    paths = [p for p in listed.split("\0") if p]
    assert "pyproject.toml" in paths  # the listing really is this repository's
    large = {}
    for path in paths:
        if path.startswith(SHIPPED) and path.endswith(".tiktoken.gz"):
            continue
        file = ROOT / path
        if file.is_file() and file.stat().st_size > MAX_BYTES:
            large[path] = file.stat().st_size
    assert not large, f"tracked files over 1 MiB: {large}"
