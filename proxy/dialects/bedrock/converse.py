"""Bedrock Converse / ConverseStream: `usage` on the body, or on the stream's `metadata`
event (after `messageStop`). inputTokens excludes cache reads and writes."""

from __future__ import annotations

from typing import Any, ClassVar

from proxy.dialects.base import (
    BaseStream,
    DialectBase,
    Observation,
    RequestInfo,
    StreamAcc,
    TextBuffer,
    error_text,
)
from proxy.dialects.bedrock.usage import from_bedrock

__all__ = ["ConverseDialect", "request_info", "served_tier"]

_EVENTS = frozenset({"messageStart", "contentBlockStart", "contentBlockDelta",
                     "contentBlockStop", "messageStop", "metadata"})


def served_tier(doc: dict[str, Any]) -> str | None:
    tier = doc.get("serviceTier")
    if isinstance(tier, dict):
        tier = tier.get("type")
    return tier if isinstance(tier, str) and tier else None


def request_info(doc: Any) -> RequestInfo:
    if not isinstance(doc, dict):
        return RequestInfo()
    cfg = doc.get("inferenceConfig")
    mt = cfg.get("maxTokens") if isinstance(cfg, dict) else None
    if mt is None:
        mt = doc.get("max_tokens")
    return RequestInfo(None, False, None, mt if isinstance(mt, int) else None, served_tier(doc))


def _apply_usage(acc: StreamAcc, doc: dict[str, Any]) -> None:
    usage = doc.get("usage")
    if isinstance(usage, dict):
        from dataclasses import replace

        acc.usage_raw = usage
        acc.usage = replace(from_bedrock(usage), service_tier=served_tier(doc))


def _block_text(delta: Any, out: TextBuffer) -> None:
    if not isinstance(delta, dict):
        return
    out.add(delta.get("text"))
    for key in ("toolUse", "reasoningContent"):
        part = delta.get(key)
        if isinstance(part, dict):
            out.add(part.get("input"))
            out.add(part.get("text"))


class _Stream(BaseStream):
    __slots__ = ()

    def on_frame(self, name: str | None, data: bytes) -> None:
        acc = self.acc
        if name not in _EVENTS:  # an exception frame (throttlingException, ...)
            acc.status, acc.error = "error", f"bedrock:{name}"
            return
        obj = self._load(data)
        if not isinstance(obj, dict):
            return
        if name == "contentBlockDelta":
            _block_text(obj.get("delta"), acc.text)
        elif name == "messageStop":
            if acc.status != "error":
                acc.status = "complete"
        elif name == "metadata":
            _apply_usage(acc, obj)


class ConverseDialect(DialectBase):
    name: ClassVar[str] = "bedrock.converse"
    family: ClassVar[str] = "bedrock"
    text_keys: ClassVar[tuple[str, ...]] = ("system", "messages", "toolConfig")

    def request_info(self, doc: Any) -> RequestInfo:
        return request_info(doc)

    def from_json(self, doc: Any) -> Observation:
        if not isinstance(doc, dict):
            return Observation(parse_errors=1)
        acc = StreamAcc()
        _apply_usage(acc, doc)
        acc.status = "complete" if doc.get("stopReason") or acc.usage else "error"
        if acc.status == "error":
            acc.error = error_text(doc.get("__type") or doc.get("message"))
        out = doc.get("output")
        msg = out.get("message") if isinstance(out, dict) else None
        for block in (msg.get("content") or ()) if isinstance(msg, dict) else ():
            _block_text(block, acc.text)
        return acc.build()

    def new_stream(self) -> _Stream:
        return _Stream()
