"""`tokenbooth keys create|list|show|revoke|rotate`: consumer keys, on the configured ledger
directly (SQLite or PostgreSQL). A running proxy sees a change within a second (it polls
the keys' version; on PostgreSQL each change is also NOTIFYed to every replica). The secret
is printed once, by `create` and `rotate`; it is stored only as its HMAC."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from proxy.backends import LedgerBackend, query
from proxy.commands.common import emit, with_ledger
from proxy.keyring import KeyAdmin, install_secret
from proxy.keys import KeySpecError, StoredKey, parse_spec

__all__ = ["add_parser", "run"]

_COLS = ("id", "name", "tags", "upstreams", "models", "limits", "expires_at", "created_at",
         "revoked_at", "last4")


def add_parser(sub: Any, add_common: Callable[..., None]) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "keys", help="consumer keys: create, list, show, revoke, rotate")
    add_common(p)
    p.add_argument("action", choices=("create", "list", "show", "revoke", "rotate"))
    p.add_argument("id", nargs="?", help="the key's id (show, revoke, rotate)")
    p.add_argument("--name", help="create: who the key is for (fills each call's client)")
    p.add_argument("--tag", action="append", default=[], metavar="K=V",
                   help="create: a tag added to every call the key makes (repeatable)")
    p.add_argument("--upstream", action="append", default=[], metavar="GLOB",
                   help="create: an upstream the key may use (repeatable; none: any)")
    p.add_argument("--model", action="append", default=[], metavar="GLOB",
                   help="create: a model the key may use (repeatable; none: any)")
    p.add_argument("--expires", help="create: ISO-8601 time, or a duration like 30d")
    p.add_argument("--requests-per-minute", type=float)
    p.add_argument("--tokens-per-minute", type=float)
    p.add_argument("--usd-per-minute", type=float)
    p.add_argument("--all", action="store_true", help="list: revoked keys too")
    p.add_argument("--format", choices=("table", "json"), default="table")
    return p


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    tags: dict[str, str] = {}
    for t in args.tag:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise KeySpecError("--tag", f"{t!r} is not K=V")
        tags[k] = v
    limits: dict[str, Any] = {}
    for name in ("requests_per_minute", "tokens_per_minute", "usd_per_minute"):
        v = getattr(args, name)
        if v is not None:
            limits[name] = int(v) if name != "usd_per_minute" and v == int(v) else v
    doc: dict[str, Any] = {"name": args.name, "tags": tags, "upstreams": args.upstream,
                           "models": args.model, "expires_at": args.expires,
                           "limits": limits}
    return parse_spec(doc)


def _row(stored: StoredKey) -> dict[str, Any]:
    out = stored.to_json()
    out["tags"] = ",".join(f"{k}={v}" for k, v in out["tags"].items()) or "-"
    out["upstreams"] = ",".join(out["upstreams"]) or "*"
    out["models"] = ",".join(out["models"]) or "*"
    out["limits"] = ",".join(f"{k}={v}" for k, v in out["limits"].items()
                             if v is not None) or "-"
    return out


def _print(stored: StoredKey, fmt: str, secret: str | None = None) -> None:
    if fmt == "json":
        print(json.dumps({**stored.to_json(), **({"key": secret} if secret else {})},
                         indent=2))
        return
    for k, v in _row(stored).items():
        print(f"{k}: {'-' if v is None else v}")
    if secret:
        print(f"key: {secret}")
        print("(shown once: only its HMAC is stored; send it as the provider API key)")


def run(args: argparse.Namespace, config: Any) -> int:
    action = args.action
    if action in ("show", "revoke", "rotate") and not args.id:
        raise query.QueryError("id", f"keys {action} needs the key's id (see: keys list)")
    if action != "create" and args.name:
        raise query.QueryError("--name", "only for keys create")
    try:
        spec = _spec(args) if action == "create" else None
    except KeySpecError as exc:
        raise query.QueryError(exc.field, str(exc).partition(": ")[2]) from None

    async def work(backend: LedgerBackend) -> tuple[Any, str | None]:
        admin = KeyAdmin(backend, await install_secret(backend))
        if action == "create":
            assert spec is not None
            return await admin.create(spec)
        if action == "list":
            return await admin.all(), None
        if action == "show":
            return await admin.get(args.id), None
        if action == "revoke":
            return await admin.revoke(args.id), None
        try:
            got = await admin.rotate(args.id)
        except KeySpecError as exc:
            raise query.QueryError("id", str(exc).partition(": ")[2]) from None
        return (None, None) if got is None else got

    result, secret = with_ledger(config, work, migrate=True, must_exist=False)
    if action == "list":
        keys = [k for k in result if args.all or k.revoked_at is None]
        if args.format == "json":
            print(json.dumps({"keys": [k.to_json() for k in keys]}, indent=2))
        elif keys:
            emit([_row(k) for k in keys], _COLS, "table")
        else:
            print("(no keys)")
        return 0
    if result is None:
        raise query.QueryError("id", f"no consumer key {args.id!r}")
    _print(result, args.format, secret)
    return 0
