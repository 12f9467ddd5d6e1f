"""Ollama: native /api/chat, /api/generate, /api/embed, and its OpenAI-compatible routes.
Local inference: upstreams of this dialect are free by default."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from proxy.dialects.base import Injector, Match, Provider
from proxy.dialects.openai import injector, match_post

__all__ = ["OllamaProvider"]

_NATIVE = (
    (re.compile(r"(?:^|/)api/chat$"), "chat"),
    (re.compile(r"(?:^|/)api/generate$"), "generate"),
    (re.compile(r"(?:^|/)api/embed(?:dings)?$"), "embeddings"),
)


class OllamaProvider(Provider):
    name: ClassVar[str] = "ollama"
    builtins: ClassVar[dict[str, dict[str, Any]]] = {
        "ollama": {"url": "http://127.0.0.1:11434", "free": True}}

    def match(self, method: str, path: str) -> Match | None:
        if method != "POST":
            return None
        for pattern, op in _NATIVE:
            if pattern.search(path):
                return Match(op, "ollama.native")
        return match_post(path)

    def injector(self, parser: str | None) -> Injector | None:
        return injector(parser)  # its OpenAI-compatible routes
