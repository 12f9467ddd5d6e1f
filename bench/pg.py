"""A throwaway PostgreSQL cluster for the benchmarks (the same one the tests start):
`--pg-url` points at your own server instead."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pg import PgServer

__all__ = ["PgServer"]
