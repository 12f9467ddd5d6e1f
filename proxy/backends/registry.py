"""Which backend a ledger URL names: the one place a `ledger.url` or a `--db` is read.

A URL is `<scheme>://...`; a value without a scheme is a SQLite file path. Each scheme is
one line of `BACKENDS` (the module and class that serve it), so a new backend is one new
module and one line here; its module is imported only when a ledger of its kind is opened.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.backends.base import LedgerBackend

__all__ = ["ALIASES", "BACKENDS", "LedgerUrl", "UnknownLedger", "mask_url", "open_backend",
           "parse_url", "unavailable_errors"]

# scheme -> (module, class, an example of the URL); the class takes the URL's `target`
BACKENDS: dict[str, tuple[str, str, str]] = {
    "sqlite": ("proxy.backends.sqlite", "SqliteBackend", "sqlite:///<path> or a file path"),
    "postgresql": ("proxy.backends.postgres", "PostgresBackend",
                   "postgresql://user:pass@host:5432/db"),
}
ALIASES = {"postgres": "postgresql"}  # another spelling of a scheme above
DEFAULT_SQLITE = "./tokenbooth.db"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class UnknownLedger(ValueError):
    """A ledger URL no backend serves (the message names the ones that exist)."""


@dataclass(frozen=True, slots=True)
class LedgerUrl:
    scheme: str  # a key of BACKENDS
    target: str  # what the backend opens: SQLite's file path, else the URL itself

    @property
    def local(self) -> bool:
        """A file on this machine (its key secret and spool live beside it)."""
        return self.scheme == "sqlite"


def mask_url(url: str | None) -> str | None:
    """A database URL with its password replaced by '***'."""
    return None if url is None else re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def parse_url(text: str) -> LedgerUrl:
    """`sqlite:///./x.db` and `sqlite:////abs/x.db` (as SQLAlchemy spells them), a bare path,
    `postgresql://...`; any other `scheme://` is an UnknownLedger, never a file named
    after it."""
    m = _SCHEME.match(text)
    if m is None:
        return LedgerUrl("sqlite", text)
    scheme = m.group(1).lower()
    scheme = ALIASES.get(scheme, scheme)
    if scheme not in BACKENDS:
        raise UnknownLedger(f"{mask_url(text)!r}: no ledger backend for {scheme}:// (known: "
                            + ", ".join(BACKENDS) + "); use "
                            + " or ".join(example for _m, _c, example in BACKENDS.values()))
    if scheme == "sqlite":
        if not text.startswith("sqlite:///"):
            raise UnknownLedger(f"{text!r}: a SQLite ledger is sqlite:///<path> (three "
                                f"slashes, then the path)")
        return LedgerUrl("sqlite", text[len("sqlite:///"):] or DEFAULT_SQLITE)
    return LedgerUrl(scheme, text)


def open_backend(target: str | LedgerUrl) -> LedgerBackend:
    """A backend object for `target`; nothing connects until it is used."""
    url = target if isinstance(target, LedgerUrl) else parse_url(target)
    module, cls, _example = BACKENDS[url.scheme]
    backend: LedgerBackend = getattr(importlib.import_module(module), cls)(url.target)
    return backend


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """The `unavailable` errors of every backend loaded so far (one not loaded raised
    nothing): what a command reports as "cannot reach the ledger"."""
    errors: list[type[BaseException]] = []
    for module, cls, _example in BACKENDS.values():
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.extend(getattr(loaded, cls).unavailable)
    return tuple(dict.fromkeys(errors))
