"""Anthropic: Messages (also the body and stream shape of Bedrock InvokeModel and Vertex
rawPredict for Claude), count_tokens, and Message Batch results
(`GET /v1/messages/batches/{id}/results`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import unquote

from proxy.dialects.anthropic.quota import read_quota
from proxy.dialects.base import Match, Provider
from proxy.dialects.rewrite import BytesReplacer
from proxy.quota import Quota

__all__ = ["AnthropicProvider", "error_body"]

_POST = (
    (re.compile(r"(?:^|/)messages/count_tokens$"), "count_tokens", "free.count_tokens"),
    (re.compile(r"(?:^|/)messages$"), "messages", "anthropic.messages"),
)
_RESULTS = re.compile(r"(?:^|/)messages/batches/([^/]+)/results$")
_BATCHES = re.compile(r"(?:^|/)messages/batches(?:/[^/]+)?(?:/cancel)?$")
# Our error kinds -> the error types the anthropic SDK knows.
_TYPES = {"budget_exceeded": "rate_limit_error", "rate_limit_exceeded": "rate_limit_error",
          "authentication_error": "authentication_error",
          "request_too_large": "request_too_large", "unknown_upstream": "not_found_error",
          "bad_request": "invalid_request_error"}


def error_body(kind: str, message: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _TYPES.get(kind, "api_error"),
                                       "message": message, **extra}}


class AnthropicProvider(Provider):
    name: ClassVar[str] = "anthropic"
    sdk_headers: ClassVar[tuple[str, ...]] = ("anthropic-version",)
    builtins: ClassVar[dict[str, dict[str, Any]]] = {
        "anthropic": {"url": "https://api.anthropic.com"}}
    price_provider: ClassVar[str | None] = "anthropic"

    def match(self, method: str, path: str) -> Match | None:
        if method == "GET":
            m = _RESULTS.search(path)
            return Match("batch", "anthropic.batch", batch_id=unquote(m.group(1))) if m else None
        if method != "POST":
            return None
        for pattern, op, parser in _POST:
            if pattern.search(path):
                return Match(op, parser)
        return None

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def tags(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Claude Code names its session and, on a sub-agent's calls, the sub-agent."""
        out = {}
        session = headers.get("X-Claude-Code-Session-Id")
        if session:
            out["session"] = session[:256]
        agent = headers.get("X-Claude-Code-Agent-Id")
        if agent:
            out["claude_code_agent"] = agent[:256]
        return out

    def response_filter(self, method: str, path: str, upstream_url: str,
                        public_url: Callable[[], str]) -> BytesReplacer | None:
        """A batch's `results_url` is absolute: point it back through the proxy, or the
        SDK's `batches.results()` would download (unmetered) from the provider itself."""
        if not _BATCHES.search(path.rstrip("/")):
            return None
        public = public_url()
        return BytesReplacer(*((f'"results_url":{sp}"{upstream_url}/'.encode(),
                                f'"results_url":{sp}"{public}/'.encode()) for sp in ("", " ")))

    def error(self, status: int, kind: str, message: str,
              extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        return error_body(kind, message, extra), {}

    def quota(self, headers: Mapping[str, str], now: float) -> Quota | None:
        return read_quota(headers, now)
