"""The one reading of a ledger URL, the registry of backends, and the interface each one
keeps: `ledger.url` and `--db` name a backend or are a clear error, never a file named
after an unknown scheme."""

from __future__ import annotations

import ast
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.backends import (
    BACKENDS,
    FleetBackend,
    LedgerBackend,
    LedgerUrl,
    UnknownLedger,
    open_backend,
    parse_url,
)
from proxy.backends.registry import unavailable_errors

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("text,url", [
    ("./tokenbooth.db", LedgerUrl("sqlite", "./tokenbooth.db")),
    ("/var/lib/tb/ledger.db", LedgerUrl("sqlite", "/var/lib/tb/ledger.db")),
    ("C:\\ledgers\\tb.db", LedgerUrl("sqlite", "C:\\ledgers\\tb.db")),
    ("sqlite:///./x.db", LedgerUrl("sqlite", "./x.db")),
    ("sqlite:////abs/x.db", LedgerUrl("sqlite", "/abs/x.db")),
    ("sqlite:///", LedgerUrl("sqlite", "./tokenbooth.db")),
    ("postgresql://tb:pw@db:5432/tb", LedgerUrl("postgresql", "postgresql://tb:pw@db:5432/tb")),
    ("postgres://db/tb", LedgerUrl("postgresql", "postgres://db/tb")),
    ("PostgreSQL://db/tb", LedgerUrl("postgresql", "PostgreSQL://db/tb")),
])
def test_a_ledger_url_names_its_backend(text: str, url: LedgerUrl) -> None:
    assert parse_url(text) == url
    assert url.local == (url.scheme == "sqlite")


@pytest.mark.parametrize("text", ["mysql://tb:secret@db/tb", "clickhouse://db", "sqlite://x.db"])
def test_an_unknown_scheme_is_an_error_naming_the_ones_that_exist(text: str) -> None:
    with pytest.raises(UnknownLedger) as caught:
        parse_url(text)
    message = str(caught.value)
    assert "sqlite:///" in message
    if not text.startswith("sqlite"):
        assert "postgresql://" in message and "(known: sqlite, postgresql)" in message
    assert "secret" not in message  # a password is never echoed


def test_every_registered_backend_keeps_the_interface(tmp_path: Path) -> None:
    sqlite_ledger = open_backend(str(tmp_path / "l.db"))
    assert isinstance(sqlite_ledger, LedgerBackend)
    assert sqlite_ledger.kind == "sqlite" and sqlite_ledger.path == str(tmp_path / "l.db")
    assert sqlite_ledger.fleet is None  # one process: nothing shared
    pg_ledger = open_backend("postgresql://tb@127.0.0.1:1/tb")  # nothing connects yet
    assert isinstance(pg_ledger, FleetBackend) and pg_ledger.fleet is pg_ledger
    assert pg_ledger.kind == "postgresql" and pg_ledger.path is None
    for scheme in BACKENDS:
        example = "x.db" if scheme == "sqlite" else f"{scheme}://127.0.0.1:1/x"
        assert isinstance(open_backend(example), LedgerBackend), scheme
    assert sqlite3.Error in unavailable_errors()


def test_only_the_postgresql_backend_imports_asyncpg() -> None:
    """asyncpg is loaded only when a PostgreSQL ledger is opened: no other module imports
    it, and a SQLite ledger's command never loads it."""
    importers = []
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "asyncpg" or n.startswith("asyncpg.") for n in names):
                importers.append(str(path.relative_to(ROOT)))
    assert sorted(set(importers)) == ["proxy/backends/postgres.py"]
    script = ("import sys\n"
              "from proxy.cli import main\n"
              "import proxy.commands, proxy.config, proxy.sinks.ledger, proxy.sinks.export\n"
              "import proxy.app\n"
              "assert main(['calls', '--db', sys.argv[1]]) == 2\n"  # no such ledger file
              "print('asyncpg' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "no-such-ledger.db")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", done.stdout


def test_no_module_outside_the_backends_asks_which_backend_it_has() -> None:
    """Everything types against LedgerBackend: the backend classes are named only inside
    proxy/backends/."""
    naming = set()
    for path in sorted((ROOT / "proxy").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel.startswith("proxy/backends/"):
            continue
        text = path.read_text()
        if "SqliteBackend" in text or "PostgresBackend" in text:
            naming.add(rel)
    assert naming == set()


def test_each_backend_keeps_the_interface_as_mypy_reads_it() -> None:
    """`mypy --strict` on proxy/backends/: each backend module holds its class to
    LedgerBackend (SQLite) or FleetBackend (PostgreSQL), so a missing or misspelt method
    is a type error, not a crash in production."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir",
                           str(ROOT / ".mypy_cache"), "--strict", "--follow-imports=silent",
                           "proxy/backends"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout, done.stdout
