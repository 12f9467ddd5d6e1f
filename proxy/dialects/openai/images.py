"""OpenAI Images (`images/generations`, `images/edits`) for token-billed image models
(gpt-image-1 and later): `usage` like the Responses API's, input split into text and image
tokens. Every output token is an image token, billed at the model's output rate, so output
is not split out again. Streamed partial images carry usage on the `*.completed` event."""

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
from proxy.dialects.openai.usage import from_openai

__all__ = ["ImagesDialect"]


def _apply(acc: StreamAcc, obj: dict[str, Any]) -> None:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        u = from_openai(usage, responses=True)
        rest = {k: v for k, v in (u.units or {}).items() if k != "output_image_tokens"}
        acc.usage_raw, acc.usage = usage, replace(u, units=rest or None)
    if obj.get("error") is not None:
        acc.status, acc.error = "error", error_text(obj["error"])


class _Stream(BaseStream):
    __slots__ = ()

    def on_frame(self, name: str | None, data: bytes) -> None:
        obj = self._load(data)
        if isinstance(obj, dict):
            _apply(self.acc, obj)
            if str(obj.get("type", name or "")).endswith(".completed") \
                    and self.acc.status != "error":
                self.acc.status = "complete"


class ImagesDialect(DialectBase):
    name: ClassVar[str] = "openai.images"
    text_keys: ClassVar[tuple[str, ...]] = ("prompt",)
    has_output: ClassVar[bool] = False  # images: no text to estimate output from

    def request_info(self, doc: Any) -> RequestInfo:
        if not isinstance(doc, dict):
            return RequestInfo()
        model = doc.get("model")
        return RequestInfo(model if isinstance(model, str) else None, doc.get("stream") is True,
                           doc.get("user") if isinstance(doc.get("user"), str) else None)

    def from_json(self, doc: Any) -> Observation:
        if not isinstance(doc, dict):
            return Observation(parse_errors=1)
        acc = StreamAcc(status="complete")
        _apply(acc, doc)
        return acc.build()

    def new_stream(self) -> _Stream:
        return _Stream()
