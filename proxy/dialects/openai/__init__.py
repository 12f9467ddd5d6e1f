"""OpenAI and the OpenAI-compatible family (OpenRouter, Groq, Mistral, DeepSeek, xAI, vLLM,
Azure deployments): routes, key header, error shape and stream-usage injection.

Parsers: `chat` (chat/completions, completions, embeddings), `responses`, `background`
(retrieving, resuming and cancelling a stored response: a background response's usage is
recorded when first seen finished), `batch` (Batch output files downloaded through
`GET /v1/files/{id}/content`), `audio` (transcriptions, translations, speech); on a
WebSocket, `realtime`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import unquote

from proxy.dialects.base import Injector, Match, Provider, SocketDialect
from proxy.dialects.openai import inject as injection
from proxy.dialects.openai.quota import read_quota
from proxy.dialects.openai.realtime import RealtimeDialect
from proxy.quota import Quota

__all__ = ["OpenAIProvider", "POST_ROUTES", "injector", "match_post"]

# (suffix regex, operation, parser) for POST, first match wins.
POST_ROUTES = (
    (re.compile(r"(?:^|/)chat/completions$"), "chat", "openai.chat"),
    (re.compile(r"(?:^|/)responses/input_tokens$"), "count_tokens", "free.count_tokens"),
    (re.compile(r"(?:^|/)responses$"), "responses", "openai.responses"),
    (re.compile(r"(?:^|/)completions$"), "completions", "openai.completions"),
    (re.compile(r"(?:^|/)embeddings$"), "embeddings", "openai.embeddings"),
    (re.compile(r"(?:^|/)images/(?:generations|edits)$"), "images", "openai.images"),
    (re.compile(r"(?:^|/)messages/count_tokens$"), "count_tokens", "free.count_tokens"),
    (re.compile(r"(?:^|/)messages$"), "messages", "anthropic.messages"),
    (re.compile(r"(?:^|/)audio/(?:transcriptions|translations)$"), "transcription",
     "openai.transcription"),
    (re.compile(r"(?:^|/)audio/speech$"), "speech", "openai.speech"),
)
_AZURE_DEPLOYMENT = re.compile(r"(?:^|/)deployments/([^/]+)/")
_FILE_CONTENT = re.compile(r"(?:^|/)files/([^/]+)/content$")
_RESPONSE = re.compile(r"(?:^|/)responses/[^/]+$")  # retrieve, or resume its stream
_CANCEL = re.compile(r"(?:^|/)responses/[^/]+/cancel$")
_RETRIEVE = "openai.responses_retrieve"
_REALTIME = re.compile(r"(?:^|/)realtime$")  # OpenAI, Azure (`openai/realtime`, `openai/v1/...`)
_REALTIME_DIALECT = RealtimeDialect()
_INJECTED = frozenset({"openai.chat", "openai.completions"})


def match_post(path: str) -> Match | None:
    """The OpenAI-compatible POST routes (also served by Gemini, Ollama and Vertex)."""
    for pattern, op, parser in POST_ROUTES:
        if pattern.search(path):
            dep = _AZURE_DEPLOYMENT.search(path)
            return Match(op, parser, unquote(dep.group(1)) if dep else None)
    return None


class _Injector:
    """`stream_options.include_usage` for chat/completions streams, and its undoing."""

    inject = staticmethod(injection.inject)
    stripper = staticmethod(injection.UsageStripper)


_INJECTOR = _Injector()


def injector(parser: str | None) -> _Injector | None:
    """Injection for the OpenAI-compatible chat/completions parsers, whoever serves them."""
    return _INJECTOR if parser in _INJECTED else None


class OpenAIProvider(Provider):
    name: ClassVar[str] = "openai"
    inject_by_default: ClassVar[bool] = True
    builtins: ClassVar[dict[str, dict[str, Any]]] = {
        "openai": {"url": "https://api.openai.com"},
        "openrouter": {"url": "https://openrouter.ai/api"},
        "groq": {"url": "https://api.groq.com/openai"},
        "mistral": {"url": "https://api.mistral.ai"},
        "deepseek": {"url": "https://api.deepseek.com"},
        "xai": {"url": "https://api.x.ai"},
    }
    # upstream name -> genai-prices provider id; other OpenAI-compatible servers: any.
    price_providers: ClassVar[dict[str, str]] = {
        "openai": "openai", "openrouter": "openrouter", "groq": "groq", "mistral": "mistral",
        "deepseek": "deepseek", "xai": "x-ai", "azure": "azure"}

    def match(self, method: str, path: str) -> Match | None:
        if method == "GET":
            m = _FILE_CONTENT.search(path)
            # Any file's content: the batch parser records rows only for batch result lines.
            if m:
                return Match("batch", "openai.batch", batch_id=unquote(m.group(1)))
            return Match("retrieve", _RETRIEVE) if _RESPONSE.search(path) else None
        if method != "POST":
            return None
        if _CANCEL.search(path):
            return Match("cancel", _RETRIEVE)
        return match_post(path)

    def injector(self, parser: str | None) -> Injector | None:
        return injector(parser)

    def quota(self, headers: Mapping[str, str], now: float) -> Quota | None:
        return read_quota(headers, now)

    def socket(self, path: str) -> SocketDialect | None:
        return _REALTIME_DIALECT if _REALTIME.search(path.rstrip("/")) else None
