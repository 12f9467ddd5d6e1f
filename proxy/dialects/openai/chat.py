"""OpenAI Chat Completions, legacy Completions and Embeddings, and the compatible family.

Usage is taken from a non-null `usage` (never from `choices == []`: Azure's first chunk has
empty choices, DeepSeek/Mistral/OpenRouter put usage on the finish chunk) or from Groq's
`x_groq.usage`; the latest snapshot wins (vLLM continuous stats, Gemini compat).
"""

from __future__ import annotations

from collections.abc import Callable
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
from proxy.dialects.openai.common import openai_request_info, provider_cost
from proxy.dialects.openai.estimate import chat_tokens, tools_tokens
from proxy.dialects.openai.usage import from_openai
from proxy.estimate import strings

__all__ = ["ChatDialect", "CompletionsDialect", "EmbeddingsDialect"]


def _usage_of(obj: dict[str, Any]) -> Any:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        return usage
    xg = obj.get("x_groq")
    if isinstance(xg, dict) and isinstance(xg.get("usage"), dict):
        return xg["usage"]
    return None


def _collect_text(choices: Any, text: TextBuffer, key: str) -> bool:
    """Add visible text of each choice; True when a choice finished."""
    finished = False
    if not isinstance(choices, list):
        return False
    for ch in choices:
        if not isinstance(ch, dict):
            continue
        if ch.get("finish_reason"):
            finished = True
        part = ch.get(key) if key != "text" else ch
        if not isinstance(part, dict):
            continue
        if key == "text":
            text.add(part.get("text"))
            continue
        text.add(part.get("content"))
        text.add(part.get("reasoning_content"))
        text.add(part.get("reasoning"))
        for call in part.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                text.add(call["function"].get("name"))
                text.add(call["function"].get("arguments"))
    return finished


def _may_carry(data: bytes) -> bool:
    """Could this frame hold usage, an error or metadata? False positives only cost a
    parse; a plain delta frame is the only kind ever answered False."""
    return (b'"usage"' in data and b'"usage":null' not in data) or b'"error"' in data


class _ChatStream(BaseStream):
    __slots__ = ("key", "done", "finished")
    quiet: ClassVar[Screen | None] = Screen(
        (b'"x_groq"', b'"error"', b"[DONE]", b'"usage":{', b'"finish_reason":"'),
        ((b'"usage"', (b'"usage":null', b'"usage": null'), rb'"usage"\s*:\s*\{'),
         (b'"finish_reason"', (b'"finish_reason":null', b'"finish_reason": null'),
          rb'"finish_reason"\s*:\s*"')))

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.done = False
        self.finished = False

    def _text(self, obj: Any, out: TextBuffer) -> None:
        _collect_text(obj.get("choices"), out, self.key)

    def ready(self) -> bool:
        return bool(self.acc.model)

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        if data != b"[DONE]":
            out.add_raw(data, self._text)

    def on_frame(self, name: str | None, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        acc = self.acc
        if acc.model and not _may_carry(data):
            acc.text.add_raw(data, self._text)
            if b'"finish_reason":"' in data:
                self.finished = True
            return
        obj = self._load(data)
        if not isinstance(obj, dict):
            return
        usage = _usage_of(obj)
        if usage is not None:
            acc.usage_raw = usage
            acc.usage = from_openai(usage, tier=obj.get("service_tier"))
            acc.cost = provider_cost(usage) or acc.cost
        if obj.get("error") is not None or obj.get("object") == "error":
            acc.status = "error"
            acc.error = error_text(obj.get("error") or obj)
        model = obj.get("model")
        if model and isinstance(model, str):
            acc.model = model
        if acc.request_id is None and obj.get("id"):
            acc.request_id = str(obj["id"])
        if _collect_text(obj.get("choices"), acc.text, self.key):
            self.finished = True

    def result(self) -> Observation:
        acc = self.acc
        if acc.status != "error":
            acc.status = "complete" if self.done or (self.finished and acc.usage is not None) \
                else "incomplete"
        return acc.build(self.errors)


def _from_json(doc: Any, key: str) -> Observation:
    if not isinstance(doc, dict):
        return Observation(parse_errors=1)
    acc = StreamAcc()
    usage = _usage_of(doc)
    if usage is not None:
        acc.usage_raw, acc.cost = usage, provider_cost(usage)
        acc.usage = from_openai(usage, tier=doc.get("service_tier"))
    if doc.get("error") is not None:
        acc.status, acc.error = "error", error_text(doc["error"])
    else:
        acc.status = "complete"
    acc.model = doc.get("model") if isinstance(doc.get("model"), str) else None
    acc.request_id = str(doc["id"]) if doc.get("id") else None
    if acc.usage is None or acc.usage.output_tokens is None:  # text only serves an estimate
        _collect_text(doc.get("choices"), acc.text, key)
    return acc.build()


class ChatDialect(DialectBase):
    name: ClassVar[str] = "openai.chat"
    text_key: ClassVar[str] = "delta"

    def request_info(self, doc: Any) -> RequestInfo:
        return openai_request_info(doc)

    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int:
        if not isinstance(doc.get("messages"), list):
            return 0
        return chat_tokens(doc["messages"], count) + tools_tokens(doc.get("tools"), count,
                                                                  model)

    def from_json(self, doc: Any) -> Observation:
        return _from_json(doc, "message")

    def new_stream(self) -> _ChatStream:
        return _ChatStream(self.text_key)


class CompletionsDialect(ChatDialect):
    name: ClassVar[str] = "openai.completions"
    text_key: ClassVar[str] = "text"

    text_keys: ClassVar[tuple[str, ...]] = ("prompt",)

    def from_json(self, doc: Any) -> Observation:
        return _from_json(doc, "text")

    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int:
        return DialectBase.estimate_input(self, doc, count, model)


class EmbeddingsDialect(ChatDialect):
    name: ClassVar[str] = "openai.embeddings"
    has_output: ClassVar[bool] = False  # nothing generated: output is 0, not estimated

    def from_json(self, doc: Any) -> Observation:
        return _from_json(doc, "none")

    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int:
        inp = doc.get("input")
        return sum(count(t) for t in strings(inp)) + sum(
            len(x) for x in (inp if isinstance(inp, list) else []) if isinstance(x, list))
