"""The registry of provider API parsers: key "<provider>.<api>" -> Dialect."""

from __future__ import annotations

from proxy.dialects.anthropic_messages import MessagesDialect
from proxy.dialects.base import Dialect, Observation, RequestInfo, StreamState
from proxy.dialects.free_count_tokens import CountTokensDialect
from proxy.dialects.gemini_generate import GenerateDialect
from proxy.dialects.ollama_native import OllamaDialect
from proxy.dialects.openai_chat import ChatDialect, CompletionsDialect, EmbeddingsDialect
from proxy.dialects.openai_responses import ResponsesDialect

__all__ = ["DIALECTS", "Dialect", "Observation", "RequestInfo", "StreamState", "lookup"]

DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (ChatDialect(), CompletionsDialect(), EmbeddingsDialect(), ResponsesDialect(),
              MessagesDialect(), GenerateDialect(), OllamaDialect(), CountTokensDialect())
}


def lookup(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown dialect {name!r} (known: {', '.join(sorted(DIALECTS))})") \
            from None
