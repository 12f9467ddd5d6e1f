"""A throwaway PostgreSQL cluster for the benchmarks: Debian's `postgresql` binaries, a
durable cluster (fsync and full-page writes on, as a production server runs) in a temporary
directory on a free loopback port, as an unprivileged user when run as root. `--pg-url`
points at your own server instead."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PgServer", "postgres_url"]


def _bindir() -> Path:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(cand, "postgres").exists() and Path(cand, "initdb").exists():
            return Path(cand)
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl, createdb) not found: "
                     "install Debian's `postgresql`, or give --pg-url")


class PgServer:
    """One durable local cluster; `create_database(name)` gives a URL, `close()` removes it."""

    def __init__(self) -> None:
        self.bin = _bindir()
        self.user = next((n for n in ("postgres", "nobody") if _user_exists(n)), None) \
            if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="tokenbooth-bench-pg-"))
        if self.user:
            info = pwd.getpwnam(self.user)
            os.chown(self.dir, info.pw_uid, info.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        data = str(self.dir / "data")
        self._run("initdb", "-D", data, "-U", "tokenbooth", "--auth=trust", "-E", "UTF8",
                  "--locale=C")
        self._run("pg_ctl", "-D", data, "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                        f"-c max_connections=300", "start")

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run([str(self.bin / tool), *args], user=self.user, cwd=self.dir,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"PostgreSQL {tool} failed ({proc.returncode}): "
                             f"{proc.stderr[-2000:]}")

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tokenbooth", name)
        return f"postgresql://tokenbooth@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def postgres_url(given: str | None, name: str) -> Iterator[str]:
    """`given`, or a new database on a throwaway durable local cluster (removed after)."""
    if given is not None:
        yield given
        return
    server = PgServer()
    try:
        yield server.create_database(name)
    finally:
        server.close()
