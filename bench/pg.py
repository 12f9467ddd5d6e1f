"""A throwaway PostgreSQL cluster for the benchmarks (the same one the tests start):
`--pg-url` points at your own server instead."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pg import PgServer

__all__ = ["PgServer", "postgres_url"]


@contextmanager
def postgres_url(given: str | None, name: str) -> Iterator[str]:
    """`given`, or a new database on a throwaway durable local cluster (removed after)."""
    if given is not None:
        yield given
        return
    server = PgServer(durable=True)
    try:
        yield server.create_database(name)
    finally:
        server.close()
