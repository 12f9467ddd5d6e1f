"""`bench/` stands on its own: it imports nothing from `tests/`, edits no `sys.path`, and
its ledger benchmark runs as a module from the repository root."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_imports_nothing_from_tests_and_edits_no_sys_path() -> None:
    files = sorted((ROOT / "bench").glob("*.py"))
    assert {"run.py", "pg.py", "records.py"} <= {f.name for f in files}
    found = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and node.attr == "path" \
                    and isinstance(node.value, ast.Name) and node.value.id == "sys":
                found.append(f"{file.name}:{node.lineno}: sys.path")
                continue
            else:
                continue
            found += [f"{file.name}:{node.lineno}: imports {n}" for n in names
                      if n == "tests" or n.startswith("tests.")]
    assert found == []


def test_the_ledger_benchmark_runs_as_a_module() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.ledger_bench", "--rows", "300",
                           "--backend", "sqlite"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[sqlite] rows: 300" in proc.stdout and "end to end" in proc.stdout
