"""Gemini Batch API results: result files (`GET /download/v1beta/files/{id}:download`), one
line per request, `{"key", "response": GenerateContentResponse}` or `{"key", "error"}` (also
`status`); and inline results in the finished batch itself (`GET /v1beta/batches/{id}`,
`response.inlinedResponses.inlinedResponses[]`, each `{"response" | "error", "metadata":
{"key"}}`)."""

from __future__ import annotations

from typing import Any, ClassVar

from proxy.dialects.base import BatchLine, Observation
from proxy.dialects.batch import BatchDialect, failed_line, succeeded_line
from proxy.dialects.gemini.generate import GenerateDialect

__all__ = ["DIALECT", "INLINE_DIALECT"]

_GENERATE = GenerateDialect()


def _line(obj: dict[str, Any]) -> tuple[str, Observation] | None:
    key = obj.get("key")
    if not isinstance(key, str):
        return None
    if isinstance(obj.get("response"), dict):
        return key, succeeded_line(_GENERATE.from_json(obj["response"]))
    if "error" in obj or "status" in obj:
        return key, failed_line(obj.get("error") or obj.get("status"))
    return None


DIALECT = BatchDialect("gemini.batch", _line)


def _inline_items(doc: dict[str, Any]) -> list[Any]:
    for holder in (doc.get("response"), doc.get("dest"),
                   (doc.get("metadata") or {}).get("output")):
        inlined = holder.get("inlinedResponses") if isinstance(holder, dict) else None
        items = inlined.get("inlinedResponses") if isinstance(inlined, dict) else inlined
        if isinstance(items, list):
            return items
    return []


class InlineBatchDialect(BatchDialect):
    """A finished batch's inline results: one JSON body, one call per item."""

    framing: ClassVar[str] = "auto"

    def __init__(self) -> None:
        super().__init__("gemini.batch_inline", _line)

    def from_json(self, doc: Any) -> Observation:
        stream = self.new_stream()
        if isinstance(doc, dict) and doc.get("done") is not False:
            for i, item in enumerate(_inline_items(doc)):
                if not isinstance(item, dict):
                    continue
                meta = item.get("metadata")
                key = meta.get("key") if isinstance(meta, dict) else None
                got = _line({**item, "key": key if isinstance(key, str) else f"#{i}"})
                if got is not None:
                    stream.lines.append(BatchLine(*got))
        return stream.result()


INLINE_DIALECT = InlineBatchDialect()
