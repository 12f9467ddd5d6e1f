"""Configuration: YAML file -> frozen dataclasses, validated once at start-up.

Every error is a ConfigError whose message names the YAML path of the bad key
(`upstreams.openai.url: ...`), so `check-config` and `serve` can print one clear line.
`${NAME}` anywhere in a string value is replaced from the environment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.backends.registry import UnknownLedger, mask_url, parse_url
from proxy.dialects import BUILTIN_UPSTREAMS, DEFAULT_PROVIDER, DIALECTS, PROVIDERS
from proxy.dialects.bedrock.sigv4 import AwsCredentials

__all__ = [
    "RESERVED_NAMES",
    "AdminConfig",
    "BudgetConfig",
    "Config",
    "ConfigError",
    "ExportConfig",
    "ModelPrice",
    "ServerConfig",
    "Upstream",
    "load",
    "parse",
]

RESERVED_NAMES = frozenset({"metrics", "healthz", "readyz", "api", "ui"})
BUDGET_WINDOWS = ("day", "week", "month", "total")
BUDGET_ACTIONS = ("alert", "block")
BUDGET_LEDGER_DOWN = ("local", "refuse")  # a blocking budget while the shared ledger is away
BUDGET_MATCH_KEYS_FIXED = ("upstream", "model", "client")


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    dialect: str
    inject_stream_usage: bool
    api_key: str | None = None
    # (Bedrock) IAM credentials the proxy signs with, SigV4, since a client's signature
    # names the proxy's host and cannot be forwarded
    aws: AwsCredentials | None = None
    free: bool = False  # local inference (ollama): priced at 0, not "unknown"


@dataclass(frozen=True)
class ModelPrice:
    """Per-million-token prices in USD from config (override or add to genai-prices)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class ExportConfig:
    """One export sink: every finished call record, as the ledger row in JSON."""

    type: str  # webhook | jsonl | stdout
    url: str | None = None  # webhook
    secret: str | None = None  # webhook: X-Tokenbooth-Signature: sha256=<hmac of body>
    path: str | None = None  # jsonl
    max_bytes: int = 100 * 1024 * 1024  # jsonl: rotate past this size
    keep: int = 5  # jsonl: rotated files kept
    batch: int = 100  # webhook: records per POST at most
    # jsonl, stdout: records waiting for the writer before drops (a webhook waits in the
    # ledger: accepted for it, unused)
    queue_records: int = 100_000


@dataclass(frozen=True)
class BudgetConfig:
    name: str
    match: Mapping[str, str]
    limit_usd: float
    window: str
    action: str
    on_ledger_down: str = "local"  # shared ledger unreachable: admit on this replica's view


@dataclass(frozen=True)
class AdminConfig:
    token: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    tag_labels: tuple[str, ...] = ()
    max_label_values: int = 100
    require_auth: bool = False  # parse() turns it on when admin.token is set
    max_series: int = 10_000  # label sets per metric family


@dataclass(frozen=True)
class ServerConfig:
    """Forwarding knobs (all optional)."""

    max_body_bytes: int = 32 * 1024 * 1024
    connect_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 300.0
    drain_seconds: float = 30.0
    max_connections: int = 4096
    keepalive_timeout_seconds: float = 75.0  # an idle client connection is closed after this
    header_timeout_seconds: float = 10.0  # a connection's first request head: 408 after this
    max_client_connections: int | None = None  # None: half the open-file limit
    # open connections from one client address; None: half of max_client_connections
    max_connections_per_client: int | None = None


@dataclass(frozen=True)
class LedgerConfig:
    path: str = "./tokenbooth.db"  # the SQLite file; local files (secret, spools) beside it
    queue_rows: int = 100_000
    flush_seconds: float = 0.2
    spool_path: str | None = None  # default: beside the database (`<path>.spool`)
    url: str | None = None  # postgresql://... for a fleet; sqlite:///path sets `path`
    retention_days: float | None = None  # raw rows older than this go (roll-up stays)

    @property
    def target(self) -> str:
        """What the ledger opens: a server's URL (`url`), or the SQLite file (`path`)."""
        return self.url if self.shared and self.url else self.path

    @property
    def shared(self) -> bool:  # a server's ledger (PostgreSQL), not a local file
        return self.url is not None and not parse_url(self.url).local

    @property
    def spool(self) -> str:
        if self.spool_path:
            return self.spool_path
        if self.shared and self.url:
            return str(Path(self.path).parent / f"tokenbooth-{parse_url(self.url).scheme}.spool")
        return f"{self.path}.spool"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8787
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    client_keys: Mapping[str, str] = field(default_factory=dict)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    estimation_factors: Mapping[str, float] = field(default_factory=dict)
    budgets: tuple[BudgetConfig, ...] = ()
    exports: tuple[ExportConfig, ...] = ()
    server: ServerConfig = field(default_factory=ServerConfig)
    tls_cert: str | None = None  # listen over HTTPS (boto3 sends bearer tokens only so)
    tls_key: str | None = None

    def effective_factors(self) -> dict[str, float]:
        """The factor each tokenizer family's estimates get: config, else the dialect's."""
        out = {d.family: d.estimate_factor for d in DIALECTS.values()}
        return {**dict(sorted(out.items())), **self.estimation_factors}

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets replaced by '***'."""
        return {
            "listen": {"host": self.host, "port": self.port, "tls_cert": self.tls_cert,
                       "tls_key": self.tls_key},
            "ledger": {"url": mask_url(self.ledger.url), "path": self.ledger.path,
                       "queue_rows": self.ledger.queue_rows,
                       "flush_seconds": self.ledger.flush_seconds,
                       "spool_path": self.ledger.spool_path,
                       "retention_days": self.ledger.retention_days},
            "upstreams": {
                n: {"url": u.url, "dialect": u.dialect,
                    "inject_stream_usage": u.inject_stream_usage,
                    "api_key": _mask(u.api_key), "free": u.free,
                    "aws": None if u.aws is None else {
                        "region": u.aws.region, "access_key_id": _mask(u.aws.access_key_id),
                        "secret_access_key": "***", "session_token": _mask(u.aws.session_token)}}
                for n, u in sorted(self.upstreams.items())
            },
            "auth": {"client_keys": {n: "***" for n in self.client_keys}},
            "admin": {"token": _mask(self.admin.token)},
            "metrics": {"tag_labels": list(self.metrics.tag_labels),
                        "max_label_values": self.metrics.max_label_values,
                        "max_series": self.metrics.max_series,
                        "require_auth": self.metrics.require_auth},
            "pricing": {"models": {m: {k: v for k, v in vars(p).items() if v is not None}
                                   for m, p in self.prices.items()}},
            "estimation": {"factors": self.effective_factors()},
            "budgets": [{"name": b.name, "match": dict(b.match), "limit_usd": b.limit_usd,
                         "window": b.window, "action": b.action,
                         "on_ledger_down": b.on_ledger_down} for b in self.budgets],
            "server": dict(vars(self.server)),
            "export": [{**vars(e), "secret": _mask(e.secret)} for e in self.exports],
        }


def _mask(value: str | None) -> str | None:
    return None if value is None else "***"


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


_MATCH_KEYS = ("agent", "session", "run", "upstream", "model", "client")


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


def _export(i: int, raw: Any) -> ExportConfig:
    path = f"export[{i}]"
    r = _Reader(raw, path, ("type", "url", "secret", "path", "max_bytes", "keep", "batch",
                            "queue_records"))
    kind = r.get("type", str, None)
    if kind not in ("webhook", "jsonl", "stdout"):
        raise ConfigError(f"{path}.type: expected webhook, jsonl or stdout, got {kind!r}")
    url, file = r.get("url", str, None), r.get("path", str, None)
    if kind == "webhook" and (not url or not re.match(r"https?://[^/]+", url)):
        raise ConfigError(f"{path}.url: a webhook needs an http(s) URL")
    if kind == "jsonl" and not file:
        raise ConfigError(f"{path}.path: a jsonl export needs a file path")
    return ExportConfig(
        kind, url, r.get("secret", str, None), file,
        int(_positive(f"{path}.max_bytes", r.get("max_bytes", int, 100 << 20))),
        int(_positive(f"{path}.keep", r.get("keep", int, 5))),
        int(_positive(f"{path}.batch", r.get("batch", int, 100))),
        int(_positive(f"{path}.queue_records", r.get("queue_records", int, 100_000))))


def _budget(i: int, raw: Any, names: set[str]) -> BudgetConfig:
    path = f"budgets[{i}]"
    r = _Reader(raw, path, ("name", "match", "limit_usd", "window", "action",
                            "on_ledger_down"))
    name = r.get("name", str, None)
    if not name:
        raise ConfigError(f"{path}.name: required")
    if name in names:
        raise ConfigError(f"{path}.name: duplicate budget name {name!r}")
    names.add(name)
    match_raw = r.data.get("match") or {}
    if not isinstance(match_raw, dict):
        raise ConfigError(f"{path}.match: expected a mapping of tag/upstream/model/client to value")
    match = {}
    for k, v in match_raw.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise ConfigError(f"{path}.match.{k}: expected a string")
        match[_match_key(f"{path}.match.{k}", str(k))] = str(v)
    if "limit_usd" not in r.data:
        raise ConfigError(f"{path}.limit_usd: required")
    limit = _positive(f"{path}.limit_usd", r.get("limit_usd", float, None))
    window = r.get("window", str, "day")
    if window not in BUDGET_WINDOWS:
        raise ConfigError(f"{path}.window: {window!r} is not one of {', '.join(BUDGET_WINDOWS)}")
    action = r.get("action", str, "alert")
    if action not in BUDGET_ACTIONS:
        raise ConfigError(f"{path}.action: {action!r} is not one of {', '.join(BUDGET_ACTIONS)}")
    down = r.get("on_ledger_down", str, "local")
    if down not in BUDGET_LEDGER_DOWN:
        raise ConfigError(f"{path}.on_ledger_down: {down!r} is not one of "
                          f"{', '.join(BUDGET_LEDGER_DOWN)}")
    return BudgetConfig(name, match, limit, window, action, down)


def parse(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a YAML tree (already loaded) into a Config."""
    data = _expand(raw if raw is not None else {}, "", os.environ if env is None else env)
    top = _Reader(data, "", ("listen", "ledger", "upstreams", "auth", "admin", "metrics",
                             "pricing", "estimation", "budgets", "server", "export"))
    listen = top.child("listen", ("host", "port", "tls_cert", "tls_key"))
    tls_cert, tls_key = listen.get("tls_cert", str, None), listen.get("tls_key", str, None)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("listen.tls_cert and listen.tls_key: give both or neither")
    port = listen.get("port", int, 8787)
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen.port: {port} is not a TCP port")
    ledger_r = top.child("ledger", ("url", "path", "queue_rows", "flush_seconds", "spool_path",
                                    "retention_days"))
    url = ledger_r.get("url", str, None)
    path = ledger_r.get("path", str, "./tokenbooth.db")
    if url is not None:
        try:
            parsed = parse_url(url)
        except UnknownLedger as exc:
            raise ConfigError(f"ledger.url: {exc}") from None
        if parsed.local and url != "sqlite:///":  # no path in the URL: `path` stands
            path = parsed.target
    retention = ledger_r.get("retention_days", float, None)
    ledger = LedgerConfig(
        url=url, path=path,
        retention_days=None if retention is None else _positive("ledger.retention_days",
                                                                retention),
        queue_rows=int(_positive("ledger.queue_rows", ledger_r.get("queue_rows", int, 100_000))),
        flush_seconds=_positive("ledger.flush_seconds", ledger_r.get("flush_seconds", float, 0.2)),
        spool_path=ledger_r.get("spool_path", str, None),
    )
    ups_raw = top.data.get("upstreams") or {}
    if not isinstance(ups_raw, dict):
        raise ConfigError("upstreams: expected a mapping of name to upstream")
    upstreams = {n: _upstream(n, None, b) for n, b in BUILTIN_UPSTREAMS.items()}
    for name, raw_up in ups_raw.items():
        upstreams[str(name)] = _upstream(str(name), raw_up, BUILTIN_UPSTREAMS.get(str(name)))
    auth = top.child("auth", ("client_keys",))
    keys = auth.get("client_keys", dict, {}) or {}
    for n, k in keys.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"auth.client_keys.{n}: expected a non-empty string")
    if any(u.api_key or u.aws for u in upstreams.values()) and not keys:
        raise ConfigError("auth.client_keys: required when an upstream has api_key or aws "
                          "(otherwise anyone could spend that key)")
    admin = top.child("admin", ("token",))
    metrics_r = top.child("metrics", ("tag_labels", "max_label_values", "require_auth",
                                      "max_series"))
    tag_labels = metrics_r.get("tag_labels", list, [])
    for i, t in enumerate(tag_labels):
        if not isinstance(t, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", t):
            raise ConfigError(f"metrics.tag_labels[{i}]: expected a lowercase tag name")
        if t in ("session", "run"):
            raise ConfigError(f"metrics.tag_labels[{i}]: '{t}' is never a label (unbounded)")
    token = admin.get("token", str, None)
    metrics = MetricsConfig(
        tuple(tag_labels),
        int(_positive("metrics.max_label_values", metrics_r.get("max_label_values", int, 100))),
        # with an admin token, /metrics is protected too unless explicitly opened
        metrics_r.get("require_auth", bool, token is not None),
        int(_positive("metrics.max_series", metrics_r.get("max_series", int, 10_000))),
    )
    pricing = top.child("pricing", ("models",))
    models_raw = pricing.get("models", dict, {}) or {}
    prices = {str(m): _price(str(m), p) for m, p in models_raw.items()}
    est = top.child("estimation", ("factors",))
    factors_raw = est.get("factors", dict, {}) or {}
    factors = {}
    for k, v in factors_raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
            raise ConfigError(f"estimation.factors.{k}: expected a positive number")
        factors[str(k)] = float(v)
    budgets_raw = top.get("budgets", list, []) or []
    names: set[str] = set()
    budgets = tuple(_budget(i, b, names) for i, b in enumerate(budgets_raw))
    exports = tuple(_export(i, e) for i, e in enumerate(top.get("export", list, []) or []))
    srv = top.child("server", ("max_body_bytes", "connect_timeout_seconds",
                               "idle_timeout_seconds", "drain_seconds", "max_connections",
                               "keepalive_timeout_seconds", "header_timeout_seconds",
                               "max_client_connections", "max_connections_per_client"))
    num: Callable[[str, type, Any], Any] = srv.get
    server = ServerConfig(
        max_body_bytes=int(_positive("server.max_body_bytes",
                                     num("max_body_bytes", int, 32 << 20))),
        connect_timeout_seconds=_positive("server.connect_timeout_seconds",
                                          num("connect_timeout_seconds", float, 10.0)),
        idle_timeout_seconds=_positive("server.idle_timeout_seconds",
                                       num("idle_timeout_seconds", float, 300.0)),
        drain_seconds=_not_negative("server.drain_seconds", num("drain_seconds", float, 30.0)),
        max_connections=int(_positive("server.max_connections",
                                      num("max_connections", int, 4096))),
        keepalive_timeout_seconds=_positive("server.keepalive_timeout_seconds",
                                            num("keepalive_timeout_seconds", float, 75.0)),
        header_timeout_seconds=_positive("server.header_timeout_seconds",
                                         num("header_timeout_seconds", float, 10.0)),
        max_client_connections=None if num("max_client_connections", int, None) is None
        else int(_positive("server.max_client_connections",
                           num("max_client_connections", int, None))),
        max_connections_per_client=None if num("max_connections_per_client", int, None) is None
        else int(_positive("server.max_connections_per_client",
                           num("max_connections_per_client", int, None))),
    )
    return Config(
        host=listen.get("host", str, "127.0.0.1"), port=port, ledger=ledger,
        upstreams=upstreams, client_keys={str(k): v for k, v in keys.items()},
        admin=AdminConfig(token), metrics=metrics, prices=prices,
        estimation_factors=factors, budgets=budgets, exports=exports, server=server,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )


# `${NAME}` standing alone as a value: `{key: ${NAME}}` is invalid YAML ({ opens a flow
# map), so such a value is quoted before parsing; a missing variable is then named.
_LONE_ENV = re.compile(r"([:\[{,]\s*)(\$\{[A-Za-z_][A-Za-z0-9_]*\})(?=\s*(?:[,}\]]|#|$))", re.M)


def _quote_lone_env(text: str) -> str:
    return _LONE_ENV.sub(r'\1"\2"', text)


class _AliasRefused(yaml.composer.ComposerError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: `*name` repeats a whole subtree, and a few nested ones
    (a "billion laughs" of 500 bytes) expand to gigabytes; a config has no need of them."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(
                None, None, f"aliases (*{event.anchor}) are not supported: write the value out",
                event.start_mark)
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def load(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; None means ./config.yaml if present, else defaults."""
    if path is None:
        default = Path("config.yaml")
        if not default.exists():
            return parse({}, env)
        path = default
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        raw = yaml.load(_quote_lone_env(text), Loader=_NoAliasLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        why = f": {exc.problem}" if isinstance(exc, _AliasRefused) else ""
        raise ConfigError(f"{path}:{where} invalid YAML{why}") from exc
    return parse(raw, env)
