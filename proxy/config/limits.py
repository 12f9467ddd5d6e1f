"""The spending-limit sections: `budgets` (the single-window form and layered `windows`,
with their thresholds), the `notify` sinks budgets name, and `rate_limits`. It owns what
they share: the `match` mapping (fixed keys or tags, a key one typo from a fixed key
refused) and unique entry names.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.config.model import (
    BUDGET_ACTIONS,
    BUDGET_LEDGER_DOWN,
    BUDGET_ROLLING,
    BUDGET_WINDOWS,
    NOTIFY_FORMATS,
    BudgetConfig,
    BudgetWindow,
    ConfigError,
    NotifyConfig,
    RateLimitConfig,
)
from proxy.config.reader import Reader, field_default, positive, section_keys

__all__ = ["parse_budget", "parse_notify_sink", "parse_rate_limit"]

_MATCH_KEYS = ("agent", "session", "run", "upstream", "model", "client", "key")


def _near(a: str, b: str) -> bool:
    """Edit distance at most 2 (a likely typo)."""
    if abs(len(a) - len(b)) > 2:
        return False
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1] <= 2


def _match_key(path: str, key: str) -> str:
    """A budget's match key: a fixed key, or a tag (from `X-Meter-<Key>`, so lowercase with
    `_`). A key one typo away from a fixed key is refused rather than silently never
    matching; write `tag:<key>` for a tag that really is spelled so."""
    if key.startswith("tag:"):
        tag = key[4:]
    elif key in _MATCH_KEYS:
        return key
    else:
        near = [k for k in _MATCH_KEYS if _near(key, k)]
        if near:
            raise ConfigError(f"{path}: unknown match key; did you mean '{near[0]}'? (for a "
                              f"tag of that name write 'tag:{key}')")
        tag = key
    if not re.fullmatch(r"[a-z0-9_]+", tag):
        raise ConfigError(f"{path}: tag keys are lowercase letters, digits and '_' "
                          f"(X-Meter-Team-Name is tag team_name); this could never match")
    return tag


def _match(r: Reader, path: str) -> dict[str, str]:
    """A budget's or a rate limit's `match`: each key checked (`_match_key`), each value a
    string."""
    match_raw = r.data.get("match") or {}
    if not isinstance(match_raw, dict):
        raise ConfigError(f"{path}.match: expected a mapping of {'/'.join(_MATCH_KEYS)} or "
                          f"tag:<key> to a value")
    match = {}
    for k, v in match_raw.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise ConfigError(f"{path}.match.{k}: expected a string")
        match[_match_key(f"{path}.match.{k}", str(k))] = str(v)
    return match


def _unique_name(r: Reader, path: str, names: set[str], what: str, hint: str = "") -> str:
    """An entry's `name`: required, not among `names` (the entries before it), added to them."""
    name = r.get("name", str, None)
    if not name:
        raise ConfigError(f"{path}.name: required{hint}")
    if name in names:
        raise ConfigError(f"{path}.name: duplicate {what} name {name!r}")
    names.add(name)
    return name


def parse_budget(i: int, raw: Any, names: set[str], sinks: set[str]) -> BudgetConfig:
    path = f"budgets[{i}]"
    r = Reader(raw, path, ("name", "match", "limit_usd", "window", "action",
                           "on_ledger_down", "windows", "thresholds", "notify"))
    name = _unique_name(r, path, names, "budget")
    match = _match(r, path)
    down = r.get("on_ledger_down", str, "local")
    if down not in BUDGET_LEDGER_DOWN:
        raise ConfigError(f"{path}.on_ledger_down: {down!r} is not one of "
                          f"{', '.join(BUDGET_LEDGER_DOWN)}")
    layered = r.data.get("windows") is not None
    if layered:
        given = [k for k in ("limit_usd", "window", "action") if k in r.data]
        if given:
            raise ConfigError(f"{path}.{given[0]}: give it in each of `windows`, or use the "
                              f"single-window form without `windows`")
        items = r.get("windows", list, None)
        if not items:
            raise ConfigError(f"{path}.windows: expected a non-empty list of windows")
        windows = tuple(_budget_window(f"{path}.windows[{j}]", w) for j, w in enumerate(items))
        ids = [w.id for w in windows]
        dup = next((x for x in ids if ids.count(x) > 1), None)
        if dup is not None:
            raise ConfigError(f"{path}.windows: window {dup!r} is given twice")
    else:
        windows = (_budget_window(path, r.data, single=True),)
    thresholds = r.get("thresholds", list, None)
    if thresholds is None:
        thresholds = list(field_default(BudgetConfig, "thresholds"))
    for j, t in enumerate(thresholds):
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 10:
            raise ConfigError(f"{path}.thresholds[{j}]: expected a fraction of the limit "
                              f"greater than 0 (0.8 is 80 %), got {t!r}")
    notify = r.get("notify", list, [])
    for j, n in enumerate(notify):
        if n not in sinks:
            raise ConfigError(f"{path}.notify[{j}]: no notification sink named {n!r} "
                              f"(`notify:` names: {', '.join(sorted(sinks)) or 'none'})")
    first = windows[0]
    return BudgetConfig(name, match, first.limit_usd, first.window, first.action, down,
                        windows=windows, thresholds=tuple(sorted({float(t) for t in thresholds})),
                        notify=tuple(dict.fromkeys(notify)), layered=layered)


def _budget_window(path: str, raw: Any, single: bool = False) -> BudgetWindow:
    """One window: the single-window form's own keys, or one item of `windows`."""
    if single:
        r = Reader(raw, path, tuple(map(str, raw)))  # the budget's keys, checked there
    else:
        r = Reader(raw, path, ("window", "hours", "limit_usd", "action"))
    if "limit_usd" not in r.data:
        raise ConfigError(f"{path}.limit_usd: required")
    limit = positive(f"{path}.limit_usd", r.get("limit_usd", float, None))
    window = r.get("window", str, "day")
    allowed = BUDGET_WINDOWS if single else (*BUDGET_WINDOWS, BUDGET_ROLLING)
    if window not in allowed:
        hint = " (rolling windows are given in `windows:`)" if window == BUDGET_ROLLING else ""
        raise ConfigError(f"{path}.window: {window!r} is not one of {', '.join(allowed)}{hint}")
    action = r.get("action", str, "alert")
    if action not in BUDGET_ACTIONS:
        raise ConfigError(f"{path}.action: {action!r} is not one of {', '.join(BUDGET_ACTIONS)}")
    hours = None
    if window == BUDGET_ROLLING:
        hours = r.get("hours", int, None)
        if hours is None or not 1 <= hours <= 24 * 92:
            raise ConfigError(f"{path}.hours: a rolling window needs `hours`, a whole number "
                              f"from 1 to {24 * 92}")
    elif "hours" in r.data:
        raise ConfigError(f"{path}.hours: only a rolling window has `hours`")
    return BudgetWindow(window, limit, action, hours)


def parse_notify_sink(i: int, raw: Any, names: set[str]) -> NotifyConfig:
    path = f"notify[{i}]"
    r = Reader(raw, path, section_keys(NotifyConfig))
    name = _unique_name(r, path, names, "notification sink",
                        " (budgets name it in their `notify`)")
    kind = r.get("type", str, "webhook")
    if kind != "webhook":
        raise ConfigError(f"{path}.type: expected webhook, got {kind!r}")
    url = r.get("url", str, None)
    if not url or not re.match(r"https?://[^/]+", url):
        raise ConfigError(f"{path}.url: a webhook needs an http(s) URL")
    fmt = r.get("format", str, "json")
    if fmt not in NOTIFY_FORMATS:
        raise ConfigError(f"{path}.format: {fmt!r} is not one of {', '.join(NOTIFY_FORMATS)}")
    return NotifyConfig(name, url, kind, r.get("secret", str, None), fmt)


# --- rate limits (issue 20, item 2) ---
def parse_rate_limit(i: int, raw: Any, names: set[str]) -> RateLimitConfig:
    path = f"rate_limits[{i}]"
    r = Reader(raw, path, section_keys(RateLimitConfig))
    name = _unique_name(r, path, names, "rate limit")
    if name.startswith("key:"):
        raise ConfigError(f"{path}.name: 'key:' names are a consumer key's own limits")
    match = _match(r, path)
    counts = {k: r.get(k, int, None) for k in ("requests_per_minute", "tokens_per_minute")}
    usd = {k: r.get(k, float, None) for k in ("usd_per_minute", "usd_per_hour")}
    for k, v in {**counts, **usd}.items():
        if v is not None:
            positive(f"{path}.{k}", v)
    if all(v is None for v in (*counts.values(), *usd.values())):
        raise ConfigError(f"{path}: give at least one of requests_per_minute, "
                          f"tokens_per_minute, usd_per_minute, usd_per_hour")
    return RateLimitConfig(name, match, **counts, **usd)
# --- end rate limits ---
