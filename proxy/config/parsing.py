"""Configuration parsing: a YAML tree -> Config, validated once at start-up.

Every error is a ConfigError whose message names the YAML path of the bad key
(`upstreams.openai.url: ...`), so `check-config` and `serve` can print one clear line.
`${NAME}` anywhere in a string value is replaced from the environment. Defaults are the
dataclass field defaults in `proxy.config.model`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, get_args, get_type_hints

from proxy.backends.registry import UnknownLedger, parse_url
from proxy.config.model import (
    BUDGET_ACTIONS,
    BUDGET_LEDGER_DOWN,
    BUDGET_ROLLING,
    BUDGET_WINDOWS,
    NOTIFY_FORMATS,
    OTEL_PROTOCOLS,
    OTEL_SEMCONV,
    RESERVED_NAMES,
    AdminConfig,
    AttributionConfig,
    BudgetConfig,
    BudgetWindow,
    Config,
    ConfigError,
    ExportConfig,
    LedgerConfig,
    MetricsConfig,
    ModelPrice,
    NotifyConfig,
    OtelConfig,
    PriceAdjustment,
    RateLimitConfig,
    ServerConfig,
    Upstream,
)
from proxy.dialects import BUILTIN_UPSTREAMS, DEFAULT_PROVIDER, PROVIDERS
from proxy.dialects.bedrock.sigv4 import AwsCredentials

__all__ = ["parse"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"{path}: environment variable {m.group(1)} is not set")
            return env[m.group(1)]
        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value


class _Reader:
    """Typed access to one mapping of the YAML tree; remembers its path for errors."""

    def __init__(self, data: Any, path: str, allowed: tuple[str, ...]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{_join(path, unknown[0])}: unknown key (allowed: {', '.join(allowed)})")
        self.data = data
        self.path = path

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.data or self.data[key] is None and default is None:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind in (int, float):
            raise ConfigError(f"{_join(self.path, key)}: expected {_kind(kind)}, got bool")
        if not isinstance(value, kind):
            raise ConfigError(
                f"{_join(self.path, key)}: expected {_kind(kind)}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):  # .nan, .inf
            raise ConfigError(f"{_join(self.path, key)}: expected a finite number, got {value}")
        return value

    def child(self, key: str, allowed: tuple[str, ...]) -> _Reader:
        return _Reader(self.data.get(key), _join(self.path, key), allowed)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _positive(path: str, value: float) -> float:
    if not value > 0:  # NaN too
        raise ConfigError(f"{path}: must be greater than 0")
    return value


def _not_negative(path: str, value: float) -> float:
    if not value >= 0:
        raise ConfigError(f"{path}: must not be negative")
    return value


def _keys(cls: type) -> tuple[str, ...]:
    """A section's YAML keys: its dataclass's fields, in order."""
    return tuple(f.name for f in fields(cls))


def _default(cls: type, name: str) -> Any:
    """A field's default as its dataclass writes it (the one place it is written)."""
    (default,) = (f.default for f in fields(cls) if f.name == name)
    assert default is not MISSING, f"{cls.__name__}.{name} has no default"
    return default


def _numbers(r: _Reader, cls: type, names: tuple[str, ...],
             not_negative: tuple[str, ...] = ()) -> dict[str, Any]:
    """The numeric fields `names` of `cls` read from `r`: of the field's type, defaulting to
    the field's default, greater than 0 (or not negative); None only where that is the
    default."""
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    for name in names:
        kind = next(k for k in (int, float) if k in (hints[name], *get_args(hints[name])))
        value = r.get(name, kind, _default(cls, name))
        if value is not None:
            check = _not_negative if name in not_negative else _positive
            value = check(_join(r.path, name), value)
        out[name] = value
    return out


def _upstream(name: str, raw: Any, base: dict[str, Any] | None) -> Upstream:
    path = f"upstreams.{name}"
    if name in RESERVED_NAMES:
        raise ConfigError(f"{path}: '{name}' is a reserved name "
                          f"(reserved: {', '.join(sorted(RESERVED_NAMES))})")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{path}: upstream names may use letters, digits, '_', '-', '.'")
    r = _Reader(raw, path, ("url", "dialect", "inject_stream_usage", "api_key", "free", "aws"))
    merged = {**(base or {}), **{k: v for k, v in r.data.items() if v is not None}}
    url = merged.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/]+", url):
        raise ConfigError(f"{path}.url: expected an http(s) URL, got {url!r}")
    dialect = merged.get("dialect", DEFAULT_PROVIDER)
    if dialect not in PROVIDERS:
        raise ConfigError(f"{path}.dialect: unknown dialect {dialect!r} "
                          f"(known: {', '.join(PROVIDERS)})")
    inject = r.get("inject_stream_usage", bool, PROVIDERS[dialect].inject_by_default)
    api_key = r.get("api_key", str, None)
    free = r.get("free", bool, bool(merged.get("free", False)))
    aws = None
    if r.data.get("aws") is not None:
        a = r.child("aws", ("region", "access_key_id", "secret_access_key", "session_token"))
        values = {k: a.get(k, str, None) for k in ("region", "access_key_id",
                                                    "secret_access_key")}
        for k, v in values.items():
            if not v:
                raise ConfigError(f"{path}.aws.{k}: required (a string, or ${{ENV}})")
        aws = AwsCredentials(values["region"], values["access_key_id"],
                             values["secret_access_key"], a.get("session_token", str, None))
    return Upstream(name, url.rstrip("/"), dialect, inject, api_key, free=free, aws=aws)


def _price(model: str, raw: Any) -> ModelPrice:
    r = _Reader(raw, f"pricing.models.{model}", ("input", "output", "cache_read", "cache_write"))
    for key in ("input", "output"):
        if key not in r.data:
            raise ConfigError(f"pricing.models.{model}.{key}: required (USD per million tokens)")
    values = {k: r.get(k, float, None) for k in ("input", "output", "cache_read", "cache_write")}
    for k, v in values.items():
        if v is not None and not v >= 0:
            raise ConfigError(f"pricing.models.{model}.{k}: must not be negative")
    return ModelPrice(**values)


# --- pricing.adjustments (negotiated prices: a discount or markup on the list price) ---
_GLOB = re.compile(r"[*?\[]")


def _adjustment(i: int, raw: Any, upstreams: Mapping[str, Upstream]) -> PriceAdjustment:
    path = f"pricing.adjustments[{i}]"
    r = _Reader(raw, path, ("match", "percent"))
    if "percent" not in r.data:
        raise ConfigError(f"{path}.percent: required (e.g. -20 for a 20 % discount, 10 for a "
                          f"10 % markup)")
    percent = r.get("percent", float, None)
    if percent is None or not percent > -100:
        raise ConfigError(f"{path}.percent: must be greater than -100 (a cost cannot go "
                          f"below 0), got {percent}")
    m = r.child("match", ("upstream", "model"))
    upstream, model = m.get("upstream", str, None), m.get("model", str, None)
    for key, value in (("upstream", upstream), ("model", model)):
        if value is not None and not value:
            raise ConfigError(f"{path}.match.{key}: must not be empty (leave it out to match "
                              f"any {key})")
    if upstream is not None and not _GLOB.search(upstream) and upstream not in upstreams:
        raise ConfigError(f"{path}.match.upstream: no upstream named {upstream!r} "
                          f"(configured: {', '.join(sorted(upstreams))})")
    return PriceAdjustment(percent, upstream, model)
# --- end pricing.adjustments ---


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


def _match(r: _Reader, path: str) -> dict[str, str]:
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


def _export(i: int, raw: Any) -> ExportConfig:
    path = f"export[{i}]"
    r = _Reader(raw, path, _keys(ExportConfig))
    kind = r.get("type", str, None)
    if kind not in ("webhook", "jsonl", "stdout"):
        raise ConfigError(f"{path}.type: expected webhook, jsonl or stdout, got {kind!r}")
    url, file = r.get("url", str, None), r.get("path", str, None)
    if kind == "webhook" and (not url or not re.match(r"https?://[^/]+", url)):
        raise ConfigError(f"{path}.url: a webhook needs an http(s) URL")
    if kind == "jsonl" and not file:
        raise ConfigError(f"{path}.path: a jsonl export needs a file path")
    return ExportConfig(kind, url, r.get("secret", str, None), file, **_numbers(
        r, ExportConfig, ("max_bytes", "keep", "batch", "queue_records")))


def _unique_name(r: _Reader, path: str, names: set[str], what: str, hint: str = "") -> str:
    """An entry's `name`: required, not among `names` (the entries before it), added to them."""
    name = r.get("name", str, None)
    if not name:
        raise ConfigError(f"{path}.name: required{hint}")
    if name in names:
        raise ConfigError(f"{path}.name: duplicate {what} name {name!r}")
    names.add(name)
    return name


def _budget(i: int, raw: Any, names: set[str], sinks: set[str]) -> BudgetConfig:
    path = f"budgets[{i}]"
    r = _Reader(raw, path, ("name", "match", "limit_usd", "window", "action",
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
        thresholds = list(_default(BudgetConfig, "thresholds"))
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
        r = _Reader(raw, path, tuple(map(str, raw)))  # the budget's keys, checked there
    else:
        r = _Reader(raw, path, ("window", "hours", "limit_usd", "action"))
    if "limit_usd" not in r.data:
        raise ConfigError(f"{path}.limit_usd: required")
    limit = _positive(f"{path}.limit_usd", r.get("limit_usd", float, None))
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


def _notify(i: int, raw: Any, names: set[str]) -> NotifyConfig:
    path = f"notify[{i}]"
    r = _Reader(raw, path, _keys(NotifyConfig))
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
def _rate_limit(i: int, raw: Any, names: set[str]) -> RateLimitConfig:
    path = f"rate_limits[{i}]"
    r = _Reader(raw, path, _keys(RateLimitConfig))
    name = _unique_name(r, path, names, "rate limit")
    if name.startswith("key:"):
        raise ConfigError(f"{path}.name: 'key:' names are a consumer key's own limits")
    match = _match(r, path)
    counts = {k: r.get(k, int, None) for k in ("requests_per_minute", "tokens_per_minute")}
    usd = {k: r.get(k, float, None) for k in ("usd_per_minute", "usd_per_hour")}
    for k, v in {**counts, **usd}.items():
        if v is not None:
            _positive(f"{path}.{k}", v)
    if all(v is None for v in (*counts.values(), *usd.values())):
        raise ConfigError(f"{path}: give at least one of requests_per_minute, "
                          f"tokens_per_minute, usd_per_minute, usd_per_hour")
    return RateLimitConfig(name, match, **counts, **usd)
# --- end rate limits ---


def _ledger(r: _Reader) -> LedgerConfig:
    url = r.get("url", str, None)
    path = r.get("path", str, _default(LedgerConfig, "path"))
    if url is not None:
        try:
            parsed = parse_url(url)
        except UnknownLedger as exc:
            raise ConfigError(f"ledger.url: {exc}") from None
        if parsed.local and url != "sqlite:///":  # no path in the URL: `path` stands
            path = parsed.target
    return LedgerConfig(url=url, path=path, spool_path=r.get("spool_path", str, None),
                        **_numbers(r, LedgerConfig,
                                   ("queue_rows", "flush_seconds", "retention_days")))


def _client_keys(auth: _Reader) -> dict[str, str]:
    keys = auth.get("client_keys", dict, {}) or {}
    for n, k in keys.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"auth.client_keys.{n}: expected a non-empty string")
    # An upstream with api_key or aws and no client key here is safe: every call to it must
    # then present a consumer key (issued at run time), or it is refused.
    return {str(k): v for k, v in keys.items()}


def _metrics(r: _Reader, token: str | None) -> MetricsConfig:
    tag_labels = r.get("tag_labels", list, [])
    for i, t in enumerate(tag_labels):
        if not isinstance(t, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", t):
            raise ConfigError(f"metrics.tag_labels[{i}]: expected a lowercase tag name")
        if t in ("session", "run"):
            raise ConfigError(f"metrics.tag_labels[{i}]: '{t}' is never a label (unbounded)")
    return MetricsConfig(
        tuple(tag_labels),
        # with an admin token, /metrics is protected too unless explicitly opened
        require_auth=r.get("require_auth", bool, token is not None),
        **_numbers(r, MetricsConfig, ("max_label_values", "max_series")))


# --- OpenTelemetry export (issue 21) -------------------------------------------------------
def _otel(raw: Any) -> OtelConfig:
    r = _Reader(raw, "otel", _keys(OtelConfig))
    protocol = r.get("protocol", str, _default(OtelConfig, "protocol"))
    if protocol not in OTEL_PROTOCOLS:
        raise ConfigError(f"otel.protocol: expected {' or '.join(OTEL_PROTOCOLS)}, "
                          f"got {protocol!r}")
    semconv = r.get("semconv", str, _default(OtelConfig, "semconv"))
    if semconv not in OTEL_SEMCONV:
        raise ConfigError(f"otel.semconv: expected {', '.join(OTEL_SEMCONV)}, got {semconv!r}")
    endpoint = r.get("endpoint", str, None)
    if endpoint is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", endpoint):
        raise ConfigError(f"otel.endpoint: expected an http(s) URL such as "
                          f"http://collector:4318, got {endpoint!r}")
    raw_headers = r.get("headers", dict, {}) or {}
    headers: dict[str, str] = {}
    for k, v in raw_headers.items():
        if not isinstance(v, str) or not isinstance(k, str) or not k.strip():
            raise ConfigError(f"otel.headers.{k}: expected a header name and a string value")
        # lowercase: gRPC metadata keys must be (the export fails otherwise); HTTP header
        # names are case-insensitive anyway
        name = k.strip().lower()
        if name in headers:
            raise ConfigError(f"otel.headers.{k}: named twice (header names ignore case)")
        headers[name] = v
    service = r.get("service_name", str, _default(OtelConfig, "service_name"))
    if not service.strip():
        raise ConfigError("otel.service_name: must not be empty")
    return OtelConfig(
        endpoint=endpoint, protocol=protocol, headers=headers, service_name=service,
        metrics=r.get("metrics", bool, True), spans=r.get("spans", bool, True), semconv=semconv,
        **_numbers(r, OtelConfig, ("export_interval_seconds", "queue_spans",
                                   "timeout_seconds")))
# --- end OpenTelemetry export ---------------------------------------------------------------


def _factors(r: _Reader) -> dict[str, float]:
    factors = {}
    for k, v in (r.get("factors", dict, {}) or {}).items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
            raise ConfigError(f"estimation.factors.{k}: expected a positive number")
        factors[str(k)] = float(v)
    return factors


def parse(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a YAML tree (already loaded) into a Config."""
    data = _expand(raw if raw is not None else {}, "", os.environ if env is None else env)
    top = _Reader(data, "", ("listen", "ledger", "upstreams", "auth", "admin", "metrics",
                             "pricing", "estimation", "budgets", "server", "export",
                             "attribution", "notify", "rate_limits", "otel"))
    listen = top.child("listen", ("host", "port", "tls_cert", "tls_key"))
    tls_cert, tls_key = listen.get("tls_cert", str, None), listen.get("tls_key", str, None)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("listen.tls_cert and listen.tls_key: give both or neither")
    port = listen.get("port", int, _default(Config, "port"))
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen.port: {port} is not a TCP port")
    ledger = _ledger(top.child("ledger", _keys(LedgerConfig)))
    ups_raw = top.data.get("upstreams") or {}
    if not isinstance(ups_raw, dict):
        raise ConfigError("upstreams: expected a mapping of name to upstream")
    upstreams = {n: _upstream(n, None, b) for n, b in BUILTIN_UPSTREAMS.items()}
    for name, raw_up in ups_raw.items():
        upstreams[str(name)] = _upstream(str(name), raw_up, BUILTIN_UPSTREAMS.get(str(name)))
    client_keys = _client_keys(top.child("auth", ("client_keys",)))
    token = top.child("admin", _keys(AdminConfig)).get("token", str, None)
    metrics = _metrics(top.child("metrics", _keys(MetricsConfig)), token)
    pricing = top.child("pricing", ("models", "adjustments"))
    models_raw = pricing.get("models", dict, {}) or {}
    prices = {str(m): _price(str(m), p) for m, p in models_raw.items()}
    adjustments = tuple(_adjustment(i, a, upstreams) for i, a in
                        enumerate(pricing.get("adjustments", list, []) or []))
    factors = _factors(top.child("estimation", ("factors",)))
    sinks: set[str] = set()
    notify = tuple(_notify(i, n, sinks) for i, n in enumerate(top.get("notify", list, []) or []))
    names: set[str] = set()
    budgets = tuple(_budget(i, b, names, sinks)
                    for i, b in enumerate(top.get("budgets", list, []) or []))
    exports = tuple(_export(i, e) for i, e in enumerate(top.get("export", list, []) or []))
    rate_names: set[str] = set()
    rate_limits = tuple(_rate_limit(i, r, rate_names)
                        for i, r in enumerate(top.get("rate_limits", list, []) or []))
    srv = top.child("server", _keys(ServerConfig))
    server = ServerConfig(**_numbers(srv, ServerConfig, _keys(ServerConfig),
                                     not_negative=("drain_seconds",)))
    # --- attribution (issue 21): each family on unless switched off ---
    att = top.child("attribution", _keys(AttributionConfig))
    attribution = AttributionConfig(**{k: att.get(k, bool, _default(AttributionConfig, k))
                                       for k in _keys(AttributionConfig)})
    # --- end attribution ---
    otel = _otel(top.data["otel"]) if "otel" in top.data else None
    return Config(
        host=listen.get("host", str, _default(Config, "host")), port=port, ledger=ledger,
        upstreams=upstreams, client_keys=client_keys, admin=AdminConfig(token),
        metrics=metrics, prices=prices, adjustments=adjustments, estimation_factors=factors,
        budgets=budgets, exports=exports, notify=notify, server=server, tls_cert=tls_cert,
        tls_key=tls_key, attribution=attribution, rate_limits=rate_limits, otel=otel,
    )
