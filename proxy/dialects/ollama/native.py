"""Ollama native /api/chat, /api/generate, /api/embed: usage on the `done: true` object."""

from __future__ import annotations

from dataclasses import replace
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
from proxy.dialects.ollama.usage import from_ollama

__all__ = ["OllamaDialect"]

_USAGE_KEYS = ("prompt_eval_count", "eval_count")


def _apply(acc: StreamAcc, obj: dict[str, Any]) -> None:
    if isinstance(obj.get("model"), str):
        acc.model = obj["model"]
    if obj.get("error") is not None:
        acc.status, acc.error = "error", error_text(obj["error"])
        return
    _line_text(obj, acc.text)
    if obj.get("done") is True or "embeddings" in obj:
        acc.status = "complete"
        raw = {k: obj[k] for k in (*_USAGE_KEYS, "total_duration", "load_duration",
                                   "prompt_eval_duration", "eval_duration") if k in obj}
        acc.usage_raw = raw
        acc.usage = from_ollama(obj)
        if "embeddings" in obj and acc.usage.output_tokens is None:
            acc.usage = replace(acc.usage, output_tokens=0)


def _line_text(obj: dict[str, Any], out: TextBuffer) -> None:
    msg = obj.get("message")
    if isinstance(msg, dict):
        out.add(msg.get("content"))
        out.add(msg.get("thinking"))
    out.add(obj.get("response"))


class _Stream(BaseStream):
    __slots__ = ()
    quiet: ClassVar[Screen | None] = Screen(
        (b'"error"', b'"embeddings"', b'"done":true'),
        ((b'"done"', (b'"done":false', b'"done": false'), rb'"done"\s*:\s*true'),))

    def ready(self) -> bool:
        return bool(self.acc.model)

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        out.add_raw(data, _line_text)

    def on_frame(self, name: str | None, data: bytes) -> None:
        obj = self._load(data)
        if isinstance(obj, dict):
            _apply(self.acc, obj)


class OllamaDialect(DialectBase):
    name: ClassVar[str] = "ollama.native"
    family: ClassVar[str] = "ollama"
    text_keys: ClassVar[tuple[str, ...]] = ("system", "prompt", "messages", "input")

    def request_info(self, doc: Any) -> RequestInfo:
        if not isinstance(doc, dict):
            return RequestInfo()
        opts = doc.get("options")
        mt = opts.get("num_predict") if isinstance(opts, dict) else None
        model = doc.get("model")
        # Streaming is Ollama's default; only an explicit false turns it off.
        return RequestInfo(model if isinstance(model, str) else None,
                           doc.get("stream") is not False and "input" not in doc, None,
                           mt if isinstance(mt, int) and mt > 0 else None)

    def from_json(self, doc: Any) -> Observation:
        stream = _Stream()
        if not isinstance(doc, dict):
            return Observation(parse_errors=1)
        _apply(stream.acc, doc)
        return stream.result()

    def new_stream(self) -> _Stream:
        return _Stream()
