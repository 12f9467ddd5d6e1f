"""Every OpenTelemetry name the proxy emits, in one table: a rename is one edit here.

The GenAI semantic conventions are experimental (status "Development") and moved in 2026
to their own repository, open-telemetry/semantic-conventions-genai. We follow its `main`
as of its commit 066d4a7 (docs/gen-ai/gen-ai-token-metrics.md, gen-ai-metrics.md and
gen-ai-spans.md; general attributes such as `server.address` and `error.type` from
semantic-conventions v1.44.0):

- `latest`: the token usage counters `gen_ai.client.inference.usage.*` (one per token class,
  broken down by `gen_ai.token.modality`), `gen_ai.client.operation.duration` and
  `gen_ai.client.operation.time_to_first_chunk`.
- `legacy`: the `gen_ai.client.token.usage` histogram (by `gen_ai.token.type`) and
  `gen_ai.client.operation.duration`, as instrumentations of v1.36.0 and before emit them
  and many collectors' dashboards still read them.

Not `ef678ba`: that commit is an earlier draft of the same change
(gen-ai-inference-usage-metrics.md: counters `gen_ai.client.inference.usage.detailed.*`,
histograms under the counters' present names); the merged text (changelog 374,
gen-ai-token-metrics.md, linked from the GenAI README at 066d4a7) is what is followed here.

Pure data and one pure function (the Prometheus name a collector gives each instrument);
nothing here imports OpenTelemetry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["INSTRUMENTS", "Instrument", "SEMCONV_VERSION", "prometheus_name"]

SEMCONV_VERSION = "semantic-conventions-genai main@066d4a7 (GenAI, Development)"
SCOPE = "tokenbooth"  # the instrumentation scope (meter and tracer name)


@dataclass(frozen=True)
class Instrument:
    key: str  # our name for it (the sink's attribute)
    name: str  # the OTel instrument name
    kind: str  # counter | histogram
    unit: str
    description: str
    semconv: str  # latest | legacy | both | ours (always)
    buckets: tuple[float, ...] = ()


_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                     40.96, 81.92)
_CHUNK_BUCKETS = _DURATION_BUCKETS  # the conventions advise the same boundaries for both

INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("input_tokens", "gen_ai.client.inference.usage.input_tokens", "counter",
               "{token}", "Input tokens billed, cache reads and writes included.", "latest"),
    Instrument("output_tokens", "gen_ai.client.inference.usage.output_tokens", "counter",
               "{token}", "Output tokens billed, reasoning included.", "latest"),
    Instrument("cache_read_tokens", "gen_ai.client.inference.usage.cache_read.input_tokens",
               "counter", "{token}", "Input tokens read from a cache (part of input).",
               "latest"),
    Instrument("cache_write_tokens", "gen_ai.client.inference.usage.cache_write.input_tokens",
               "counter", "{token}", "Input tokens written to a cache (part of input).",
               "latest"),
    Instrument("reasoning_tokens", "gen_ai.client.inference.usage.reasoning.output_tokens",
               "counter", "{token}", "Output tokens spent on reasoning (part of output).",
               "latest"),
    Instrument("duration", "gen_ai.client.operation.duration", "histogram", "s",
               "GenAI operation duration.", "both", _DURATION_BUCKETS),
    Instrument("ttfc", "gen_ai.client.operation.time_to_first_chunk", "histogram", "s",
               "Time to the first chunk of a streamed response.", "latest", _CHUNK_BUCKETS),
    Instrument("token_usage", "gen_ai.client.token.usage", "histogram", "{token}",
               "Number of input and output tokens used.", "legacy", _TOKEN_BUCKETS),
    Instrument("cost", "tokenbooth.cost", "counter", "USD",
               "Spend in USD of priced calls (an unpriced call adds nothing here).", "ours"),
    Instrument("unpriced", "tokenbooth.calls.unpriced", "counter", "{call}",
               "Calls with usage but no known price.", "ours"),
)

# Attribute names (metrics and spans)
PROVIDER = "gen_ai.provider.name"
# `semconv: legacy|both`: the legacy instruments (`gen_ai.client.token.usage`,
# `gen_ai.client.operation.duration`) also carry the pre-1.37 name of the provider
# attribute, with its pre-1.37 values where they differ
SYSTEM = "gen_ai.system"
LEGACY_SYSTEMS = {"azure.ai.openai": "az.ai.openai", "azure.ai.inference": "az.ai.inference",
                  "x_ai": "xai"}
OPERATION = "gen_ai.operation.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
MODALITY = "gen_ai.token.modality"
MODALITY_TEXT = "text"
MODALITY_UNKNOWN = "unknown"  # the provider did not break the tokens down by modality
# The genai-prices unit names that are one modality's part of a token class; the modality
# is the name's own (`audio`, `image`, `video`, `text`; `video` is not a well-known value
# of the conventions, which allow custom ones).
MODALITY_UNIT = re.compile(r"(input|output)_(audio|image|video|text)_tokens"
                           r"|cache_(audio|image|video|text)_(read|write)_tokens")
TOKEN_TYPE = "gen_ai.token.type"  # legacy histogram: input | output
TAG_PREFIX = "tokenbooth.tag."  # + the tag key (metrics: metrics.tag_labels only)
USAGE_SOURCE = "tokenbooth.usage_source"  # metrics: how the counted tokens were obtained

# Span-only attributes
SPAN_USAGE = {  # record field -> span attribute
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
}
# Each span attribute costs the SDK's OTLP encoder about 2.5 µs of CPU (pure Python): the
# span carries what the ledger row needs to be found and checked, and the rest only when set.
SPAN_OURS = {  # record field -> span attribute (absent when the field is None)
    "call_id": "tokenbooth.call_id",
    "outcome": "tokenbooth.outcome",
    "usage_source": "tokenbooth.usage_source",
    "price_source": "tokenbooth.price_source",
    "estimator": "tokenbooth.estimator",
    "end_user": "tokenbooth.end_user",
    "client": "tokenbooth.client",
    "error": "tokenbooth.error",
}
MAX_SPAN_TAGS = 32  # tags on a span at most (a call's tags: 32 from X-Meter-*, 256 chars each)
SPAN_COST = "tokenbooth.cost_usd"  # absent when unpriced
SPAN_TTFC = "gen_ai.response.time_to_first_chunk"  # seconds, streams only
SPAN_BATCH_ID = "tokenbooth.batch_id"  # a batch download's span: the results file's id
BATCH_DOWNLOAD = "batch_download"  # its operation and span name (lines: `batch {model}`)
SPAN_UNPRICED = "tokenbooth.unpriced"  # present (true) only for a call with usage but no price

# Our operation names -> gen_ai.operation.name well-known values (others as they are):
# the OpenAI Responses API is `chat` (openai.md: told apart by `openai.api.type`), a
# realtime socket's response `realtime_inference` (gen-ai-realtime-spans.md), Bedrock's
# Converse `chat`
OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "converse": "chat",
              "completions": "text_completion", "embeddings": "embeddings",
              "generate_content": "generate_content", "realtime": "realtime_inference"}
# Spans of provider `openai` only (openai.md): which OpenAI API, by our operation name
OPENAI_API_TYPE = "openai.api.type"
OPENAI_API_TYPES = {"chat": "chat_completions", "responses": "responses"}

# gen_ai.provider.name: by upstream name first (the built-ins that name a provider), then by
# dialect; otherwise the dialect's own name.
PROVIDERS_BY_UPSTREAM = {"groq": "groq", "deepseek": "deepseek", "mistral": "mistral_ai",
                         "xai": "x_ai", "vertex": "gcp.vertex_ai", "azure": "azure.ai.openai",
                         "perplexity": "perplexity", "cohere": "cohere"}
PROVIDERS_BY_DIALECT = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini",
                        "bedrock": "aws.bedrock", "vertex": "gcp.vertex_ai",
                        "azure": "azure.ai.openai"}

# Prometheus' own counter for what the OTel export lost
DROPPED = "tokenbooth_otel_dropped"  # {signal}: spans the full queue or a failed export lost
EXPORT_FAILURES = "tokenbooth_otel_export_failures"  # {signal}: export attempts that failed
# {instrument}: records whose attribute set went to the `other` set (metrics.max_series)
SERIES_OVERFLOW = "tokenbooth_otel_series_overflow"

_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}


def prometheus_name(inst: Instrument) -> str:
    """The name Prometheus gives the instrument after an OTel collector (or Prometheus'
    own OTLP receiver) with the default translation (underscore escaping with suffixes):
    every character outside [a-zA-Z0-9:] becomes `_`, the unit is appended (`s` ->
    `seconds`; an annotation in braces such as `{token}` is dropped; others as written),
    counters end in `_total`. A histogram's series add `_bucket`, `_sum`, `_count`."""
    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]+", inst.name) if t]
    unit = "" if "{" in inst.unit else _UNITS.get(inst.unit, inst.unit)
    if unit and unit not in tokens:
        tokens.append(unit)
    if inst.kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    return "_".join(tokens)


def label_name(attribute: str) -> str:
    """An attribute's Prometheus label name: every character outside [a-zA-Z0-9_] is `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)
