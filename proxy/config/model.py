"""The configuration's shape: frozen dataclasses, each default written once, here (the
parser reads these field defaults; nothing else repeats them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.backends.registry import mask_url, parse_url
from proxy.dialects import DIALECTS
from proxy.dialects.bedrock.sigv4 import AwsCredentials

__all__ = [
    "BUDGET_ACTIONS",
    "BUDGET_LEDGER_DOWN",
    "BUDGET_WINDOWS",
    "RESERVED_NAMES",
    "AdminConfig",
    "AttributionConfig",
    "BudgetConfig",
    "PriceAdjustment",
    "BudgetWindow",
    "Config",
    "ConfigError",
    "ExportConfig",
    "LedgerConfig",
    "MetricsConfig",
    "ModelPrice",
    "NotifyConfig",
    "RateLimitConfig",
    "OtelConfig",
    "ServerConfig",
    "Upstream",
]

RESERVED_NAMES = frozenset({"metrics", "healthz", "readyz", "api", "ui"})
BUDGET_WINDOWS = ("day", "week", "month", "total")
BUDGET_ROLLING = "rolling"  # a layered budget's window: the last `hours` clock hours
NOTIFY_FORMATS = ("json", "slack")
BUDGET_ACTIONS = ("alert", "block")
BUDGET_LEDGER_DOWN = ("local", "refuse")  # a blocking budget while the shared ledger is away


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
class PriceAdjustment:
    """`pricing.adjustments` entry: a negotiated discount (percent < 0) or a markup
    (percent > 0) on the list price of the calls it matches. `upstream` and `model` are
    globs (fnmatch, case-sensitive; None: any). The first entry that matches a call wins."""

    percent: float
    upstream: str | None = None
    model: str | None = None


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


# --- layered budgets and notices (issue 20) ---
@dataclass(frozen=True)
class BudgetWindow:
    """One window of a budget: a UTC calendar window, `total`, or `rolling` over the current
    clock hour and the `hours - 1` before it."""

    window: str
    limit_usd: float
    action: str
    hours: int | None = None  # rolling only

    @property
    def id(self) -> str:
        """How notices, the page and the metrics name it: `day`, ..., `rolling_5h`."""
        return f"rolling_{self.hours}h" if self.window == BUDGET_ROLLING else self.window


@dataclass(frozen=True)
class NotifyConfig:
    """A notification sink: budget notices POSTed to `url` (signed like the export webhook
    when `secret` is set); `format: slack` sends a Slack incoming-webhook `{"text": ...}`."""

    name: str
    url: str
    type: str = "webhook"
    secret: str | None = None
    format: str = "json"
# --- end layered budgets and notices ---


@dataclass(frozen=True)
class BudgetConfig:
    name: str
    match: Mapping[str, str]
    limit_usd: float  # the first window's (the single-window form's own)
    window: str
    action: str
    on_ledger_down: str = "local"  # shared ledger unreachable: admit on this replica's view
    # every window enforced; the single-window form is one window (parse() fills it)
    windows: tuple[BudgetWindow, ...] = ()
    thresholds: tuple[float, ...] = (0.8, 1.0)  # fractions of a window's limit: a notice
    notify: tuple[str, ...] = ()  # notification sinks (`notify:` names) that get notices
    layered: bool = False  # written with `windows:` (each window's key is `name:<id>`)

    def all_windows(self) -> tuple[BudgetWindow, ...]:
        return self.windows or (BudgetWindow(self.window, self.limit_usd, self.action),)


# --- rate limits (issue 20, item 2) ---
@dataclass(frozen=True)
class RateLimitConfig:
    """A sliding-window rate limit on the calls it matches (None: no limit of that kind)."""

    name: str
    match: Mapping[str, str]
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_minute: float | None = None
    usd_per_hour: float | None = None
# --- end rate limits ---


@dataclass(frozen=True)
class AdminConfig:
    token: str | None = None


# --- attribution from other tools' headers and bodies (issue 21) ---
@dataclass(frozen=True)
class AttributionConfig:
    """Which families of other tools' attribution are read (and their headers stripped
    before forwarding); a family switched off passes its headers through untouched."""

    helicone: bool = True
    litellm: bool = True
    portkey: bool = True
    body_user: bool = True  # the body's own `user` / `metadata.user_id` as end user
# --- end attribution ---


@dataclass(frozen=True)
class MetricsConfig:
    tag_labels: tuple[str, ...] = ()
    max_label_values: int = 100
    require_auth: bool = False  # parse() turns it on when admin.token is set
    max_series: int = 10_000  # label sets per metric family


# --- OpenTelemetry export (issue 21) -------------------------------------------------------
OTEL_PROTOCOLS = ("http/protobuf", "grpc")
OTEL_SEMCONV = ("latest", "legacy", "both")


@dataclass(frozen=True)
class OtelConfig:
    """`otel:` OTLP export of metrics and spans (absent: off, nothing of OTel is loaded)."""

    # http/protobuf: the base URL (`/v1/metrics` and `/v1/traces` are appended);
    # grpc: the collector's address. None: localhost:4318 (http) or localhost:4317 (grpc).
    endpoint: str | None = None
    protocol: str = "http/protobuf"
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every export
    service_name: str = "tokenbooth"
    metrics: bool = True
    spans: bool = True
    export_interval_seconds: float = 10.0
    semconv: str = "latest"  # latest | legacy | both (the GenAI metric names emitted)
    queue_spans: int = 2048  # spans waiting for export; past it, new spans are dropped
    timeout_seconds: float = 5.0  # one export's deadline (retries included)

    @property
    def url(self) -> str:
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return "http://localhost:4318" if self.protocol == "http/protobuf" \
            else "http://localhost:4317"
# --- end OpenTelemetry export ---------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """Forwarding knobs, all optional."""

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
    # None: the backend's (SQLite 1.0: fewer commits, each rewriting the index pages its
    # batch touched; PostgreSQL 0.2: a fleet's reservations and spend settle with them)
    flush_seconds: float | None = None
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
    adjustments: tuple[PriceAdjustment, ...] = ()  # pricing.adjustments, in order
    estimation_factors: Mapping[str, float] = field(default_factory=dict)
    budgets: tuple[BudgetConfig, ...] = ()
    rate_limits: tuple[RateLimitConfig, ...] = ()
    exports: tuple[ExportConfig, ...] = ()
    notify: tuple[NotifyConfig, ...] = ()  # notification sinks for budget notices
    server: ServerConfig = field(default_factory=ServerConfig)
    tls_cert: str | None = None  # listen over HTTPS (boto3 sends bearer tokens only so)
    tls_key: str | None = None
    attribution: AttributionConfig = field(default_factory=AttributionConfig)  # issue 21
    otel: OtelConfig | None = None  # OpenTelemetry export (issue 21)

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
                                   for m, p in self.prices.items()},
                        "adjustments": [
                            {"match": {k: v for k, v in (("upstream", a.upstream),
                                                         ("model", a.model)) if v is not None},
                             "percent": a.percent} for a in self.adjustments]},
            "estimation": {"factors": self.effective_factors()},
            "budgets": [{"name": b.name, "match": dict(b.match), "limit_usd": b.limit_usd,
                         "window": b.window, "action": b.action,
                         "on_ledger_down": b.on_ledger_down,
                         "windows": [{k: v for k, v in vars(w).items() if v is not None}
                                     for w in b.all_windows()],
                         "thresholds": list(b.thresholds), "notify": list(b.notify)}
                        for b in self.budgets],
            "notify": [{**vars(n), "secret": _mask(n.secret)} for n in self.notify],
            "rate_limits": [{k: (dict(v) if k == "match" else v) for k, v in vars(r).items()}
                            for r in self.rate_limits],
            "server": dict(vars(self.server)),
            "export": [{**vars(e), "secret": _mask(e.secret)} for e in self.exports],
            "attribution": dict(vars(self.attribution)),  # issue 21
            "otel": None if self.otel is None else {
                **vars(self.otel), "headers": {k: "***" for k in self.otel.headers}},
        }


def _mask(value: str | None) -> str | None:
    return None if value is None else "***"


