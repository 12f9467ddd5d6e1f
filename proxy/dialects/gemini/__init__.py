"""Gemini API (generativelanguage): generateContent / streamGenerateContent, countTokens,
embeddings, its OpenAI-compatible endpoint, batch result files
(`GET /download/v1beta/files/{id}:download`), and the Live socket (`live.py`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import unquote

from proxy.dialects.base import Injector, Match, Provider, SocketDialect
from proxy.dialects.gemini import live
from proxy.dialects.openai import injector, match_post

__all__ = ["GeminiProvider", "error_body", "match_method"]

_METHOD = re.compile(r"(?:^|/)(?:tunedModels|models)/([^/:]+):([A-Za-z]+)$")
_OPS = {
    "generateContent": ("generate_content", "gemini.generate", False),
    "streamGenerateContent": ("generate_content", "gemini.generate", True),
    "countTokens": ("count_tokens", "free.count_tokens", False),
    "embedContent": ("embeddings", None, False),
    "batchEmbedContents": ("embeddings", None, False),
}
_DOWNLOAD = re.compile(r"(?:^|/)files/([^/:]+):download$")
_BATCH = re.compile(r"(?:^|/)batches/([^/:]+)$")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
           502: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def match_method(path: str) -> Match | None:
    """`models/{model}:{method}` (also under Vertex publisher paths)."""
    m = _METHOD.search(path)
    if m is None:
        return None
    op, parser, stream = _OPS.get(m.group(2), ("other", None, False))
    return Match(op, parser, unquote(m.group(1)), stream)


def error_body(status: int, message: str, extra: dict[str, Any]) -> dict[str, Any]:
    """google.rpc.Status, as google-genai reads it."""
    return {"error": {"code": status, "message": message,
                      "status": _STATUS.get(status, "INTERNAL"), **extra}}


class GeminiProvider(Provider):
    name: ClassVar[str] = "gemini"
    sdk_headers: ClassVar[tuple[str, ...]] = ("x-goog-api-key", "x-goog-api-client")
    builtins: ClassVar[dict[str, dict[str, Any]]] = {
        "gemini": {"url": "https://generativelanguage.googleapis.com"}}
    price_provider: ClassVar[str | None] = "google"

    def match(self, method: str, path: str) -> Match | None:
        if method == "GET":
            m = _DOWNLOAD.search(path)
            if m:
                return Match("batch", "gemini.batch", batch_id=unquote(m.group(1)))
            m = _BATCH.search(path)  # a finished batch holds its inline results
            return Match("batch", "gemini.batch_inline",
                         batch_id=f"batches/{unquote(m.group(1))}") if m else None
        if method != "POST":
            return None
        return match_method(path) or match_post(path)  # or the OpenAI-compatible endpoint

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    def error(self, status: int, kind: str, message: str,
              extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        return error_body(status, message, {"reason": kind, **extra}), {}

    def injector(self, parser: str | None) -> Injector | None:
        return injector(parser)  # the OpenAI-compatible endpoint

    def socket_dialect(self, path: str) -> Callable[[], live.LiveState] | None:
        """The Live socket's per-socket state factory (AI Studio's or Vertex's path)."""
        return live.socket_dialect(path)

    def socket(self, path: str) -> SocketDialect | None:
        """Gemini Live (`BidiGenerateContent`): one row per completed turn."""
        return live.DIALECT if live.is_live_path(path) else None
