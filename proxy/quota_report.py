"""`tokenbooth report --quota`: each session's share of each provider account's 5-hour
window, from the quota headers the ledger keeps (`quota` column).

Each row's headers are read again by its provider's home (`Provider.quota`), the readings
of one account ordered by when its responses arrived, and `proxy.quota.session_shares`
gives each session the rises that followed its calls. No I/O here: the report command
fetches the rows (`backend.quota_calls`) and prints what `quota_view` returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from proxy.dialects import PROVIDERS
from proxy.quota import QuotaCall, Share, session_shares

__all__ = ["COLUMNS", "WINDOW", "quota_view", "readings", "table_rows"]

WINDOW = "5h"
COLUMNS = ("upstream", "account", "window_resets", "session", "calls", "measured_calls",
           "share", "before", "after")


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def readings(rows: Iterable[Mapping[str, Any]], window: str = WINDOW) -> Iterator[QuotaCall]:
    """The `window` utilization each row's response reported (rows without one: skipped).
    A response's head arrived at the first byte of a stream (`ttft_ms`), else about when
    its body ended."""
    for r in rows:
        provider = PROVIDERS.get(r.get("dialect") or "")
        try:
            headers = json.loads(r["quota"])
        except (TypeError, ValueError):
            continue
        if provider is None or not isinstance(headers, dict):
            continue
        after_ms = r["ttft_ms"] if r.get("ttft_ms") is not None else r.get("duration_ms") or 0
        seen = _epoch(r["started_at"]) + float(after_ms) / 1000
        quota = provider.quota({str(k): str(v) for k, v in headers.items()}, seen)
        w = quota.window(window) if quota is not None else None
        if w is None or w.utilization is None:
            continue
        yield QuotaCall(r["call_id"], seen, r["upstream"] or "", r.get("key_id") or "none",
                        r.get("session"), w.utilization, w.resets_at)


def quota_view(rows: Iterable[Mapping[str, Any]], session: str | None = None,
               upstream: str | None = None) -> dict[str, Any]:
    """Each session's share of each account's 5-hour window, and each window's first and
    last reading (the shares of all its sessions add up to last - first). `session` and
    `upstream` select what is shown; every call of the account still counts in the
    arithmetic."""
    calls = list(readings(rows))
    shares = session_shares(calls)
    windows: dict[tuple[str, str, float | None], list[QuotaCall]] = {}
    for c in sorted(calls, key=lambda c: (c.seen_at, c.call_id)):
        windows.setdefault((c.upstream, c.account, c.resets_at), []).append(c)

    def shown(s: Share) -> bool:
        return (session is None or s.session == session) and \
            (upstream is None or s.upstream == upstream)

    out = [{**s.to_json(), "window_resets": _iso(s.resets_at)} for s in shares if shown(s)]
    keys = {(s["upstream"], s["account"], s["resets_at"]) for s in out}
    totals = [{"upstream": k[0], "account": k[1], "resets_at": k[2],
               "window_resets": _iso(k[2]), "calls": len(cs), "first": cs[0].utilization,
               "last": cs[-1].utilization,
               "share": round(cs[-1].utilization - cs[0].utilization, 6)}
              for k, cs in sorted(windows.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                   kv[0][2] or 0.0))
              if k in keys]
    return {"window": WINDOW, "rows": out, "windows": totals}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def table_rows(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The view for a table: fractions as percentages, each window followed by its total."""
    out: list[dict[str, Any]] = []
    for w in view["windows"]:
        for r in view["rows"]:
            if (r["upstream"], r["account"], r["resets_at"]) == (w["upstream"], w["account"],
                                                                  w["resets_at"]):
                out.append({**r, "session": r["session"] or "-", "share": _pct(r["share"]),
                            "before": _pct(r["before"]), "after": _pct(r["after"])})
        out.append({"upstream": w["upstream"], "account": w["account"],
                    "window_resets": w["window_resets"], "session": "TOTAL",
                    "calls": w["calls"], "measured_calls": None, "share": _pct(w["share"]),
                    "before": _pct(w["first"]), "after": _pct(w["last"])})
    return out
