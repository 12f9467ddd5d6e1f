"""Configuration parsing: a YAML tree -> Config, validated once at start-up.

Every error is a ConfigError whose message names the YAML path of the bad key
(`upstreams.openai.url: ...`), so `check-config` and `serve` can print one clear line.
`${NAME}` anywhere in a string value is replaced from the environment. Defaults are the
dataclass field defaults in `proxy.config.model`. Reading a section is `reader`'s; the
spending-limit sections (budgets, notification sinks, rate limits) are parsed in `limits`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

from proxy.backends.registry import UnknownLedger, parse_url
from proxy.config.limits import parse_budget, parse_notify_sink, parse_rate_limit
from proxy.config.model import (
    OTEL_PROTOCOLS,
    OTEL_SEMCONV,
    RESERVED_NAMES,
    AdminConfig,
    AttributionConfig,
    Config,
    ConfigError,
    ExportConfig,
    LedgerConfig,
    MetricsConfig,
    ModelPrice,
    OtelConfig,
    PriceAdjustment,
    ServerConfig,
    Upstream,
)
from proxy.config.reader import Reader, expand_env, field_default, read_numbers, section_keys
from proxy.dialects import BUILTIN_UPSTREAMS, DEFAULT_PROVIDER, PROVIDERS
from proxy.dialects.bedrock.sigv4 import AwsCredentials

__all__ = ["parse"]


def _upstream(name: str, raw: Any, base: dict[str, Any] | None) -> Upstream:
    path = f"upstreams.{name}"
    if name in RESERVED_NAMES:
        raise ConfigError(f"{path}: '{name}' is a reserved name "
                          f"(reserved: {', '.join(sorted(RESERVED_NAMES))})")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{path}: upstream names may use letters, digits, '_', '-', '.'")
    r = Reader(raw, path, ("url", "dialect", "inject_stream_usage", "api_key", "free", "aws"))
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
    r = Reader(raw, f"pricing.models.{model}", ("input", "output", "cache_read", "cache_write"))
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
    r = Reader(raw, path, ("match", "percent"))
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


def _export(i: int, raw: Any) -> ExportConfig:
    path = f"export[{i}]"
    r = Reader(raw, path, section_keys(ExportConfig))
    kind = r.get("type", str, None)
    if kind not in ("webhook", "jsonl", "stdout"):
        raise ConfigError(f"{path}.type: expected webhook, jsonl or stdout, got {kind!r}")
    url, file = r.get("url", str, None), r.get("path", str, None)
    if kind == "webhook" and (not url or not re.match(r"https?://[^/]+", url)):
        raise ConfigError(f"{path}.url: a webhook needs an http(s) URL")
    if kind == "jsonl" and not file:
        raise ConfigError(f"{path}.path: a jsonl export needs a file path")
    return ExportConfig(kind, url, r.get("secret", str, None), file, **read_numbers(
        r, ExportConfig, ("max_bytes", "keep", "batch", "queue_records")))


def _ledger(r: Reader) -> LedgerConfig:
    url = r.get("url", str, None)
    path = r.get("path", str, field_default(LedgerConfig, "path"))
    if url is not None:
        try:
            parsed = parse_url(url)
        except UnknownLedger as exc:
            raise ConfigError(f"ledger.url: {exc}") from None
        if parsed.local and url != "sqlite:///":  # no path in the URL: `path` stands
            path = parsed.target
    return LedgerConfig(url=url, path=path, spool_path=r.get("spool_path", str, None),
                        **read_numbers(r, LedgerConfig,
                                       ("queue_rows", "flush_seconds", "retention_days")))


def _client_keys(auth: Reader) -> dict[str, str]:
    keys = auth.get("client_keys", dict, {}) or {}
    for n, k in keys.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"auth.client_keys.{n}: expected a non-empty string")
    # An upstream with api_key or aws and no client key here is safe: every call to it must
    # then present a consumer key (issued at run time), or it is refused.
    return {str(k): v for k, v in keys.items()}


def _metrics(r: Reader, token: str | None) -> MetricsConfig:
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
        **read_numbers(r, MetricsConfig, ("max_label_values", "max_series")))


# --- OpenTelemetry export (issue 21) -------------------------------------------------------
def _otel(raw: Any) -> OtelConfig:
    r = Reader(raw, "otel", section_keys(OtelConfig))
    protocol = r.get("protocol", str, field_default(OtelConfig, "protocol"))
    if protocol not in OTEL_PROTOCOLS:
        raise ConfigError(f"otel.protocol: expected {' or '.join(OTEL_PROTOCOLS)}, "
                          f"got {protocol!r}")
    semconv = r.get("semconv", str, field_default(OtelConfig, "semconv"))
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
    service = r.get("service_name", str, field_default(OtelConfig, "service_name"))
    if not service.strip():
        raise ConfigError("otel.service_name: must not be empty")
    return OtelConfig(
        endpoint=endpoint, protocol=protocol, headers=headers, service_name=service,
        metrics=r.get("metrics", bool, True), spans=r.get("spans", bool, True), semconv=semconv,
        **read_numbers(r, OtelConfig, ("export_interval_seconds", "queue_spans",
                                       "timeout_seconds")))
# --- end OpenTelemetry export ---------------------------------------------------------------


def _factors(r: Reader) -> dict[str, float]:
    factors = {}
    for k, v in (r.get("factors", dict, {}) or {}).items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
            raise ConfigError(f"estimation.factors.{k}: expected a positive number")
        factors[str(k)] = float(v)
    return factors


def parse(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a YAML tree (already loaded) into a Config."""
    data = expand_env(raw if raw is not None else {}, "", os.environ if env is None else env)
    top = Reader(data, "", ("listen", "ledger", "upstreams", "auth", "admin", "metrics",
                            "pricing", "estimation", "budgets", "server", "export",
                            "attribution", "notify", "rate_limits", "otel"))
    listen = top.child("listen", ("host", "port", "tls_cert", "tls_key"))
    tls_cert, tls_key = listen.get("tls_cert", str, None), listen.get("tls_key", str, None)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("listen.tls_cert and listen.tls_key: give both or neither")
    port = listen.get("port", int, field_default(Config, "port"))
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen.port: {port} is not a TCP port")
    ledger = _ledger(top.child("ledger", section_keys(LedgerConfig)))
    ups_raw = top.data.get("upstreams") or {}
    if not isinstance(ups_raw, dict):
        raise ConfigError("upstreams: expected a mapping of name to upstream")
    upstreams = {n: _upstream(n, None, b) for n, b in BUILTIN_UPSTREAMS.items()}
    for name, raw_up in ups_raw.items():
        upstreams[str(name)] = _upstream(str(name), raw_up, BUILTIN_UPSTREAMS.get(str(name)))
    client_keys = _client_keys(top.child("auth", ("client_keys",)))
    token = top.child("admin", section_keys(AdminConfig)).get("token", str, None)
    metrics = _metrics(top.child("metrics", section_keys(MetricsConfig)), token)
    pricing = top.child("pricing", ("models", "adjustments"))
    models_raw = pricing.get("models", dict, {}) or {}
    prices = {str(m): _price(str(m), p) for m, p in models_raw.items()}
    adjustments = tuple(_adjustment(i, a, upstreams) for i, a in
                        enumerate(pricing.get("adjustments", list, []) or []))
    factors = _factors(top.child("estimation", ("factors",)))
    sinks: set[str] = set()
    notify = tuple(parse_notify_sink(i, n, sinks)
                   for i, n in enumerate(top.get("notify", list, []) or []))
    names: set[str] = set()
    budgets = tuple(parse_budget(i, b, names, sinks)
                    for i, b in enumerate(top.get("budgets", list, []) or []))
    exports = tuple(_export(i, e) for i, e in enumerate(top.get("export", list, []) or []))
    rate_names: set[str] = set()
    rate_limits = tuple(parse_rate_limit(i, r, rate_names)
                        for i, r in enumerate(top.get("rate_limits", list, []) or []))
    srv = top.child("server", section_keys(ServerConfig))
    server = ServerConfig(**read_numbers(srv, ServerConfig, section_keys(ServerConfig),
                                         not_negative=("drain_seconds",)))
    # --- attribution (issue 21): each family on unless switched off ---
    att = top.child("attribution", section_keys(AttributionConfig))
    attribution = AttributionConfig(**{k: att.get(k, bool, field_default(AttributionConfig, k))
                                       for k in section_keys(AttributionConfig)})
    # --- end attribution ---
    otel = _otel(top.data["otel"]) if "otel" in top.data else None
    return Config(
        host=listen.get("host", str, field_default(Config, "host")), port=port, ledger=ledger,
        upstreams=upstreams, client_keys=client_keys, admin=AdminConfig(token),
        metrics=metrics, prices=prices, adjustments=adjustments, estimation_factors=factors,
        budgets=budgets, exports=exports, notify=notify, server=server, tls_cert=tls_cert,
        tls_key=tls_key, attribution=attribution, rate_limits=rate_limits, otel=otel,
    )
