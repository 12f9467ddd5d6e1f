"""count-tokens endpoints (Anthropic, OpenAI Responses, Gemini): free, not consumption.

The call is recorded with zero tokens and zero cost; the count the provider returned is
kept in `usage_raw` for audit.
"""

from __future__ import annotations

from typing import Any, ClassVar

from proxy.dialects.base import (
    DialectBase,
    Observation,
    RequestInfo,
    Screen,
    StreamAcc,
    TextBuffer,
    error_text,
)
from proxy.usage import Usage

__all__ = ["CountTokensDialect", "ZERO"]

ZERO = Usage(0, 0, 0, 0, 0, 0)


class _Nothing:
    quiet: ClassVar[Screen | None] = None

    def __init__(self) -> None:
        self.acc = StreamAcc(usage=ZERO, status="complete")  # never filled

    def ready(self) -> bool:
        return False

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        return None

    def on_frame(self, name: str | None, data: bytes) -> None:
        return None

    def result(self) -> Observation:
        return Observation(ZERO, None, status="complete")


class CountTokensDialect(DialectBase):
    name: ClassVar[str] = "free.count_tokens"
    free: ClassVar[bool] = True  # not consumption: priced at 0

    def request_info(self, doc: Any) -> RequestInfo:
        model = doc.get("model") if isinstance(doc, dict) else None
        return RequestInfo(model if isinstance(model, str) else None)

    def from_json(self, doc: Any) -> Observation:
        acc = StreamAcc(usage=ZERO, status="complete")
        if isinstance(doc, dict):
            if doc.get("error") is not None:
                acc.status, acc.error = "error", error_text(doc["error"])
            counts = {k: v for k, v in doc.items()
                      if k in ("input_tokens", "totalTokens", "cachedContentTokenCount")}
            acc.usage_raw = counts or None
        return acc.build()

    def new_stream(self) -> _Nothing:
        return _Nothing()
