"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster in a
temporary directory, on a free loopback port, run as an unprivileged user when the tests
run as root (PostgreSQL refuses root). Nothing is skipped without it: the run fails and
says what to install."""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["PgServer"]


def _bindir() -> Path:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(cand, "postgres").exists() and Path(cand, "initdb").exists():
            return Path(cand)
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    pytest.fail("PostgreSQL server binaries (initdb, postgres, pg_ctl) not found: install "
                "Debian's `postgresql` package (`.ci/run` does)", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One cluster; `stop()`/`start()` restart it on the same port (for outage tests)."""

    def __init__(self, durable: bool = False) -> None:
        """`durable`: fsync and full-page writes on, as a production server runs (the
        benchmarks); the tests run without them."""
        self.durable = durable
        self.bin = _bindir()
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                    self.user = name
                    break
                except KeyError:
                    continue
        self.dir = Path(tempfile.mkdtemp(prefix="tokenbooth-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        if self.user:
            info = pwd.getpwnam(self.user)
            os.chown(self.dir, info.pw_uid, info.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "tokenbooth", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run([str(self.bin / tool), *args], user=self.user,
                              capture_output=True, text=True, timeout=120, cwd=self.dir)
        if proc.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"PostgreSQL {tool} failed ({proc.returncode}): {proc.stderr[-2000:]}"
                        f"\n{tail}", pytrace=False)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                f"-c max_connections=300")
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://tokenbooth@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """A new empty database (its URL); runs its own loop in a thread, so any fixture
        or test may call it."""
        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(self.url())
            try:
                await conn.execute(f"CREATE DATABASE {name}")
            finally:
                await conn.close()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, create()).result()
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
