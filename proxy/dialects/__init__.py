"""The registries: providers (an upstream's `dialect`: routes, key header, error shape,
injection) and their API parsers (key "<provider>.<api>"). Adding a provider means adding
its home under `proxy/dialects/` and registering it here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.dialects import anthropic, bedrock, gemini, ollama, openai, vertex
from proxy.dialects.anthropic import batch as anthropic_batch
from proxy.dialects.anthropic.messages import MessagesDialect
from proxy.dialects.base import Dialect, Match, Observation, Provider, RequestInfo, StreamState
from proxy.dialects.bedrock.converse import ConverseDialect
from proxy.dialects.bedrock.invoke import InvokeDialect
from proxy.dialects.free_count_tokens import CountTokensDialect
from proxy.dialects.gemini import batch as gemini_batch
from proxy.dialects.gemini.generate import GenerateDialect
from proxy.dialects.ollama.native import OllamaDialect
from proxy.dialects.openai import batch as openai_batch
from proxy.dialects.openai.audio import SpeechDialect, TranscriptionDialect
from proxy.dialects.openai.background import RetrieveDialect
from proxy.dialects.openai.chat import ChatDialect, CompletionsDialect, EmbeddingsDialect
from proxy.dialects.openai.images import ImagesDialect
from proxy.dialects.openai.responses import ResponsesDialect

__all__ = ["BUILTIN_UPSTREAMS", "DEFAULT_PROVIDER", "DIALECTS", "PROVIDERS", "Dialect", "Match",
           "Observation", "Provider", "RequestInfo", "StreamState", "lookup", "price_provider",
           "provider_by_headers", "recorded_model"]

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (openai.OpenAIProvider(), anthropic.AnthropicProvider(), gemini.GeminiProvider(),
              ollama.OllamaProvider(), bedrock.BedrockProvider(), vertex.VertexProvider())
}
DEFAULT_PROVIDER = "openai"  # the dialect of an upstream whose config names none

DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (ChatDialect(), CompletionsDialect(), EmbeddingsDialect(), ResponsesDialect(),
              MessagesDialect(), GenerateDialect(), OllamaDialect(), CountTokensDialect(),
              ConverseDialect(), InvokeDialect(), ImagesDialect(), RetrieveDialect(),
              openai_batch.DIALECT,
              anthropic_batch.DIALECT, gemini_batch.DIALECT, gemini_batch.INLINE_DIALECT,
              TranscriptionDialect(), SpeechDialect())
}

# Built-in upstreams, each with its provider's name as dialect (config merges over them).
BUILTIN_UPSTREAMS: dict[str, dict[str, Any]] = {
    name: {**spec, "dialect": p.name}
    for p in PROVIDERS.values() for name, spec in p.builtins.items()
}


def recorded_model(dialect: str | None, requested: str | None,
                   priced: str | None) -> str | None:
    """The model a row holds: the price list's name for it, or, for a provider whose model
    ids the list renames (Bedrock), the id the caller asked for."""
    p = PROVIDERS.get(dialect or "")
    if p is not None and p.model_as_requested and requested:
        return requested
    return priced


def price_provider(dialect: str | None, upstream: str) -> str | None:
    """The genai-prices provider id for an upstream: by its name, else by its dialect."""
    p = PROVIDERS.get(dialect or "")
    if p is None:
        return None
    return p.price_providers.get(upstream, p.price_provider)


def provider_by_headers(headers: Mapping[str, str]) -> Provider | None:
    """For a refusal before any upstream is known: the provider whose SDK seems to call
    (by a header only its SDK sends), else None (the OpenAI-style shape)."""
    for p in PROVIDERS.values():
        if any(h in headers for h in p.sdk_headers):
            return p
    return None


def lookup(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown dialect {name!r} (known: {', '.join(sorted(DIALECTS))})") \
            from None
