"""Gemini generateContent / streamGenerateContent (SSE with CRLF, or a streamed JSON array).

The model is named in the URL path; `modelVersion` may carry a `models/` prefix. Every
chunk carries running totals in `usageMetadata`: the last one wins.
"""

from __future__ import annotations

from typing import Any, ClassVar

from proxy.dialects.base import (
    BaseStream,
    DialectBase,
    Observation,
    RequestInfo,
    Screen,
    StreamAcc,
    TextBuffer,
    error_text,
)
from proxy.usage import from_gemini

__all__ = ["GenerateDialect"]


def _apply(acc: StreamAcc, obj: dict[str, Any]) -> None:
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
        content = cand.get("content")
        for part in (content.get("parts") or ()) if isinstance(content, dict) else ():
            if isinstance(part, dict):
                acc.text.add(part.get("text"))
    fb = obj.get("promptFeedback")
    if isinstance(fb, dict) and fb.get("blockReason") and acc.status != "error":
        acc.status = "complete"


class _Stream(BaseStream):
    """Every chunk carries running usage totals: nothing can be skipped."""

    __slots__ = ()
    quiet: ClassVar[Screen | None] = None

    def ready(self) -> bool:
        return False

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        return None

    def on_frame(self, name: str | None, data: bytes) -> None:
        obj = self._load(data)
        if isinstance(obj, list):  # an error array, or a whole array in one frame
            for item in obj:
                if isinstance(item, dict):
                    _apply(self.acc, item)
        elif isinstance(obj, dict):
            _apply(self.acc, obj)


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
                    _apply(stream.acc, item)
            if stream.acc.status == "unknown":
                stream.acc.status = "complete"
            return stream.acc.build()
        return Observation(parse_errors=1)

    def new_stream(self) -> _Stream:
        return _Stream()
