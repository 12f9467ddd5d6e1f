"""Anthropic Messages (also Bedrock/Vertex-shaped bodies and Anthropic-compatible servers).

Stream usage starts from `message_start.message.usage`; every later `message_delta.usage`
field replaces the one before (cumulative, latest wins, never summed). The 5m/1h cache
split exists only in `message_start`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from proxy.dialects.anthropic.usage import from_anthropic
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
from proxy.estimate import strings

__all__ = ["MessagesDialect"]


def _block_text(block: Any, out: TextBuffer) -> None:
    if not isinstance(block, dict):
        return
    for key in ("text", "thinking", "partial_json"):
        out.add(block.get(key))
    if block.get("type") == "tool_use" and isinstance(block.get("input"), dict | list):
        out.add(json.dumps(block["input"]))


def _text_of_block(block: Any, acc: StreamAcc) -> None:
    _block_text(block, acc.text)


def _delta_text(obj: dict[str, Any], out: TextBuffer) -> None:
    _block_text(obj.get("delta"), out)


class _Stream(BaseStream):
    __slots__ = ("raw", "delta_seen")
    quiet: ClassVar[Screen | None] = Screen(
        (b'"error"', b"event: error", b"message_start", b"message_delta", b"message_stop"))

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        if name == "content_block_delta" or (name is None and b"content_block_delta" in data):
            out.add_raw(data, _delta_text)

    def __init__(self) -> None:
        super().__init__()
        self.raw: dict[str, Any] | None = None
        self.delta_seen = False

    def _merge(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.raw = {**(self.raw or {}), **usage}  # normalized once, in result()
        self.acc.usage_raw = self.raw

    def on_frame(self, name: str | None, data: bytes) -> None:
        if name == "content_block_delta":  # text only: read later, if ever needed
            self.acc.text.add_raw(data, _delta_text)
            return
        if name == "ping":
            return
        obj = self._load(data)
        if isinstance(obj, dict):
            self.on_event(obj, name)

    def on_event(self, obj: dict[str, Any], name: str | None = None) -> None:
        """One parsed event (Bedrock InvokeModel streams hand them over already parsed)."""
        kind = obj.get("type") or name
        acc = self.acc
        if kind == "content_block_delta":
            _text_of_block(obj.get("delta"), acc)
        elif kind == "message_delta":
            self.delta_seen = True
            self._merge(obj.get("usage"))
        elif kind == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                self._merge(msg.get("usage"))
                if isinstance(msg.get("model"), str):
                    acc.model = msg["model"]
                if msg.get("id"):
                    acc.request_id = str(msg["id"])
        elif kind == "message_stop":
            if acc.status != "error":
                acc.status = "complete"
        elif kind == "error":
            acc.status = "error"
            acc.error = error_text(obj.get("error"))

    def result(self) -> Observation:
        acc = self.acc
        if self.raw is not None:
            acc.usage = from_anthropic(self.raw)
            if not self.delta_seen:
                # message_start's output_tokens is a placeholder: only message_delta is real.
                acc.usage = replace(acc.usage, output_tokens=None, reasoning_tokens=None)
        return super().result()


_LEGACY_USER = re.compile(r"^user_([0-9a-f]+)_account_([0-9a-f-]*)_session_([0-9a-f-]+)$")


def claude_code_user(user_id: Any) -> tuple[str | None, str | None]:
    """(end user, session) from `metadata.user_id`. Claude Code sends a JSON string
    (`device_id`, `account_uuid`, `session_id`) or `user_<hash>_account_<uuid>_session_<uuid>`:
    the end user is the account (else a short device id), never the raw 150-character
    string; the session is Claude Code's own. Anything else is the end user as sent."""
    if not isinstance(user_id, str) or not user_id:
        return None, None
    if user_id.startswith("{"):
        try:
            doc = json.loads(user_id)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            account, device = doc.get("account_uuid"), doc.get("device_id")
            session = doc.get("session_id")
            user = account if isinstance(account, str) and account else (
                f"device_{device[:16]}" if isinstance(device, str) and device else None)
            return user, session if isinstance(session, str) and session else None
    m = _LEGACY_USER.match(user_id)
    if m is not None:
        return (m.group(2) or f"user_{m.group(1)[:16]}"), m.group(3)
    return user_id[:256], None


def estimate_tokens(doc: dict[str, Any], count: Callable[[str], int]) -> int:
    total = sum(count(t) for t in strings(doc.get("system")))
    for msg in doc.get("messages") or ():
        total += 3 + sum(count(t) for t in strings(msg))
    if doc.get("tools"):
        total += count(json.dumps(doc["tools"], separators=(",", ":")))
    return total


class MessagesDialect(DialectBase):
    name: ClassVar[str] = "anthropic.messages"
    family: ClassVar[str] = "anthropic"
    estimate_factor: ClassVar[float] = 1.2  # Claude's tokenizer runs ~20% above o200k

    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int:
        return estimate_tokens(doc, count)

    def request_info(self, doc: Any) -> RequestInfo:
        if not isinstance(doc, dict):
            return RequestInfo()
        meta = doc.get("metadata")
        user, session = claude_code_user(meta.get("user_id") if isinstance(meta, dict) else None)
        model = doc.get("model")
        mt = doc.get("max_tokens")
        tier = doc.get("service_tier")
        return RequestInfo(model if isinstance(model, str) else None, doc.get("stream") is True,
                           user, mt if isinstance(mt, int) and not isinstance(mt, bool) else None,
                           tier if isinstance(tier, str) else None, session)

    def from_json(self, doc: Any) -> Observation:
        if not isinstance(doc, dict):
            return Observation(parse_errors=1)
        acc = StreamAcc()
        if doc.get("type") == "error":
            acc.status, acc.error = "error", error_text(doc.get("error"))
            return acc.build()
        usage = doc.get("usage")
        if isinstance(usage, dict):
            acc.usage_raw, acc.usage = usage, from_anthropic(usage)
        acc.model = doc.get("model") if isinstance(doc.get("model"), str) else None
        acc.request_id = str(doc["id"]) if doc.get("id") else None
        acc.status = "complete"
        for block in doc.get("content") or ():
            _text_of_block(block, acc)
        return acc.build()

    def new_stream(self) -> _Stream:
        return _Stream()
