"""Ollama: native /api/chat, /api/generate, /api/embed, and its OpenAI-compatible routes.
Local inference: upstreams of this dialect are free by default."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from proxy.dialects.base import Match
from proxy.dialects.openai import error_body, injector, match_post

__all__ = ["OllamaProvider"]

_NATIVE = (
    (re.compile(r"(?:^|/)api/chat$"), "chat"),
    (re.compile(r"(?:^|/)api/generate$"), "generate"),
    (re.compile(r"(?:^|/)api/embed(?:dings)?$"), "embeddings"),
)


class OllamaProvider:
    name: ClassVar[str] = "ollama"
    sdk_headers: ClassVar[tuple[str, ...]] = ()
    inject_by_default: ClassVar[bool] = False
    builtins: ClassVar[dict[str, dict[str, Any]]] = {
        "ollama": {"url": "http://127.0.0.1:11434", "free": True}}
    price_providers: ClassVar[dict[str, str]] = {}
    price_provider: ClassVar[str | None] = None

    def match(self, method: str, path: str) -> Match | None:
        if method != "POST":
            return None
        for pattern, op in _NATIVE:
            if pattern.search(path):
                return Match(op, "ollama.native")
        return match_post(path)

    def response_filter(self, method: str, path: str, upstream_url: str,
                        public_url: str) -> None:
        return None

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def error(self, status: int, kind: str, message: str,
              extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        return error_body(kind, message, extra), {}

    def injector(self, parser: str | None) -> Any:
        return injector(parser)  # its OpenAI-compatible routes
