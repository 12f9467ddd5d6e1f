"""Vertex AI: Gemini under `publishers/google/models/{m}:generateContent` (and
streamGenerateContent, countTokens), Claude under `publishers/anthropic/models/{m}:rawPredict`
/ `:streamRawPredict` (Anthropic bodies and streams; the model is only in the path), and
the OpenAI-compatible `endpoints/openapi/chat/completions`, and the Gemini Live socket
(`/ws/google.cloud.aiplatform.{v}.LlmBidiService/BidiGenerateContent`, read by
`proxy/dialects/gemini/live.py`). Auth is an OAuth bearer token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import unquote

from proxy.dialects.base import Injector, Match, Provider, SocketDialect
from proxy.dialects.gemini import error_body, live, match_method
from proxy.dialects.openai import injector, match_post

__all__ = ["VertexProvider"]

_CLAUDE = re.compile(r"(?:^|/)publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)$")


class VertexProvider(Provider):
    name: ClassVar[str] = "vertex"
    builtins: ClassVar[dict[str, dict[str, Any]]] = {
        "vertex": {"url": "https://aiplatform.googleapis.com"}}
    price_provider: ClassVar[str | None] = "google"

    def match(self, method: str, path: str) -> Match | None:
        if method != "POST":
            return None
        m = _CLAUDE.search(path)
        if m is not None:
            model = unquote(m.group(1))
            if model == "count-tokens":
                return Match("count_tokens", "free.count_tokens")
            return Match("messages", "anthropic.messages", model)
        return match_method(path) or match_post(path)

    def error(self, status: int, kind: str, message: str,
              extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        return error_body(status, message, {"reason": kind, **extra}), {}

    def injector(self, parser: str | None) -> Injector | None:
        return injector(parser)

    def socket_dialect(self, path: str) -> Callable[[], live.LiveState] | None:
        """The Live socket's per-socket state factory (AI Studio's or Vertex's path)."""
        return live.socket_dialect(path)

    def socket(self, path: str) -> SocketDialect | None:
        """Gemini Live (`BidiGenerateContent`): one row per completed turn."""
        return live.DIALECT if live.is_live_path(path) else None
