"""Bedrock InvokeModel / InvokeModelWithResponseStream.

For Anthropic models the body is an Anthropic Messages body; the stream is event-stream
`chunk` frames whose JSON `{"bytes": base64}` carries one Anthropic event each, the last
one adding `amazon-bedrock-invocationMetrics` (used only when the Anthropic usage is
missing). Other model families' bodies report usage as Converse does (`usage.inputTokens`,
Nova) or as `prompt_token_count` / `generation_token_count` (Llama).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, ClassVar

from proxy.dialects.anthropic.messages import MessagesDialect, estimate_tokens
from proxy.dialects.anthropic.messages import _Stream as AnthropicStream
from proxy.dialects.base import DialectBase, Observation, RequestInfo, Screen, TextBuffer
from proxy.dialects.bedrock.converse import ConverseDialect, request_info
from proxy.dialects.bedrock.usage import from_bedrock
from proxy.estimate import strings
from proxy.usage import Usage

__all__ = ["InvokeDialect"]

_METRICS = "amazon-bedrock-invocationMetrics"


def _other_usage(doc: dict[str, Any]) -> Usage | None:
    if isinstance(doc.get("usage"), dict) and "inputTokens" in doc["usage"]:
        return from_bedrock(doc["usage"])
    if "prompt_token_count" in doc or "generation_token_count" in doc:
        return from_bedrock({"inputTokens": doc.get("prompt_token_count"),
                             "outputTokens": doc.get("generation_token_count")})
    return None


class _Stream(AnthropicStream):
    __slots__ = ("metrics",)
    quiet: ClassVar[Screen | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, Any] | None = None

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        return None

    def on_frame(self, name: str | None, data: bytes) -> None:
        if name != "chunk":
            self.acc.status, self.acc.error = "error", f"bedrock:{name}"
            return
        outer = self._load(data)
        raw = outer.get("bytes") if isinstance(outer, dict) else None
        if not isinstance(raw, str):
            return
        try:
            inner = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            self.errors += 1
            return
        event = self._load(inner)
        if not isinstance(event, dict):
            return
        if isinstance(event.get(_METRICS), dict):
            self.metrics = event[_METRICS]
        self.on_event(event)

    def result(self) -> Observation:
        obs = super().result()
        if obs.usage is None and self.metrics is not None:
            from dataclasses import replace

            return replace(obs, usage=from_bedrock(self.metrics), usage_raw=self.metrics)
        return obs


class InvokeDialect(DialectBase):
    name: ClassVar[str] = "bedrock.invoke"
    family: ClassVar[str] = "anthropic"
    estimate_factor: ClassVar[float] = 1.2

    def request_info(self, doc: Any) -> RequestInfo:
        if isinstance(doc, dict) and "messages" in doc and "anthropic_version" in doc:
            return MessagesDialect().request_info(doc)
        return request_info(doc)

    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int:
        if "anthropic_version" in doc:
            return estimate_tokens(doc, count)
        return ConverseDialect().estimate_input(doc, count, model) + sum(
            count(t) for t in strings([doc.get("prompt"), doc.get("inputText")]))

    def from_json(self, doc: Any) -> Observation:
        if isinstance(doc, dict) and doc.get("type") != "message":
            usage = _other_usage(doc)
            if usage is not None:
                return Observation(usage, doc.get("usage"), status="complete")
        return MessagesDialect().from_json(doc)

    def new_stream(self) -> _Stream:
        return _Stream()


