"""Gemini generateContent / streamGenerateContent (SSE with CRLF, or a streamed JSON array).

The model is named in the URL path; `modelVersion` may carry a `models/` prefix. Every
chunk carries running totals in `usageMetadata`: the last one wins.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from proxy.dialects.base import (
    BaseStream,
    DialectBase,
    Observation,
    RequestInfo,
    StreamAcc,
    error_text,
)
from proxy.dialects.gemini.usage import from_gemini

__all__ = ["GenerateDialect"]


def _apply(acc: StreamAcc, obj: dict[str, Any], queries: set[str]) -> None:
    usage = obj.get("usageMetadata")
    if isinstance(usage, dict):
        acc.usage_raw, acc.usage = usage, from_gemini(usage)
    mv = obj.get("modelVersion")
    if isinstance(mv, str) and mv:
        acc.model = mv.removeprefix("models/")
    if obj.get("responseId"):
        acc.request_id = str(obj["responseId"])
    if obj.get("error") is not None:
        acc.status, acc.error = "error", error_text(obj["error"])
        return
    for cand in obj.get("candidates") or ():
        if not isinstance(cand, dict):
            continue
        if cand.get("finishReason") and acc.status != "error":
            acc.status = "complete"
        grounding = cand.get("groundingMetadata")
        if isinstance(grounding, dict):
            queries.update(q for q in grounding.get("webSearchQueries") or ()
                           if isinstance(q, str))
        content = cand.get("content")
        for part in (content.get("parts") or ()) if isinstance(content, dict) else ():
            if isinstance(part, dict):
                acc.text.add(part.get("text"))
    fb = obj.get("promptFeedback")
    if isinstance(fb, dict) and fb.get("blockReason") and acc.status != "error":
        acc.status = "complete"


def grounded_searches(model: str | None, queries: set[str]) -> int:
    """Grounding with Google Search: Gemini 2.x and earlier bill each grounded prompt once,
    later models each search query the model ran."""
    if not queries:
        return 0
    m = (model or "").lower().rsplit("/", 1)[-1]
    return 1 if m.startswith(("gemini-1", "gemini-2")) else len(queries)


class _Stream(BaseStream):
    """Every chunk carries running usage totals: nothing can be skipped."""

    __slots__ = ("queries",)

    def __init__(self) -> None:
        super().__init__()
        self.queries: set[str] = set()

    def result(self) -> Observation:
        acc = self.acc
        searches = grounded_searches(acc.model, self.queries)
        if searches and acc.usage is not None:
            acc.usage = replace(acc.usage, units={**(acc.usage.units or {}),
                                                  "web_searches": searches})
        return super().result()

    def ready(self) -> bool:
        return False

    def on_frame(self, name: str | None, data: bytes) -> None:
        obj = self._load(data)
        if isinstance(obj, list):  # an error array, or a whole array in one frame
            for item in obj:
                if isinstance(item, dict):
                    _apply(self.acc, item, self.queries)
        elif isinstance(obj, dict):
            _apply(self.acc, obj, self.queries)


class GenerateDialect(DialectBase):
    name: ClassVar[str] = "gemini.generate"
    family: ClassVar[str] = "gemini"
    text_keys: ClassVar[tuple[str, ...]] = ("systemInstruction", "contents", "tools")

    def request_info(self, doc: Any) -> RequestInfo:
        if not isinstance(doc, dict):
            return RequestInfo()
        gc = doc.get("generationConfig")
        mt = gc.get("maxOutputTokens") if isinstance(gc, dict) else None
        return RequestInfo(None, False, None, mt if isinstance(mt, int) else None)

    def from_json(self, doc: Any) -> Observation:
        stream = _Stream()
        if isinstance(doc, list | dict):
            for item in doc if isinstance(doc, list) else [doc]:
                if isinstance(item, dict):
                    _apply(stream.acc, item, stream.queries)
            if stream.acc.status == "unknown":
                stream.acc.status = "complete"
            return stream.result()
        return Observation(parse_errors=1)

    def new_stream(self) -> _Stream:
        return _Stream()
