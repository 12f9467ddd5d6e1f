"""OpenAI Responses API: usage only in the terminal event (completed/incomplete/failed).
A background response's create is read by the same parser and recorded as pending
(`proxy.dialects.openai.background`)."""

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
from proxy.dialects.openai.common import openai_request_info, provider_cost
from proxy.dialects.openai.usage import from_openai

__all__ = ["FINISHED", "ResponseStream", "ResponsesDialect", "settle"]

_TERMINAL = {"response.completed": "complete", "response.incomplete": "incomplete",
             "response.failed": "error"}
_TEXT_EVENTS = frozenset({
    "response.output_text.delta", "response.function_call_arguments.delta",
    "response.reasoning_summary_text.delta", "response.reasoning_text.delta",
    "response.refusal.delta",
})


# The response object's `status` once it will change no more (cancelled keeps whatever
# usage was reported by then).
FINISHED = frozenset({"completed", "incomplete", "failed", "cancelled"})


def settle(obs: Observation, background: bool, finished: bool) -> Observation:
    """A response's observation, as the exchange that saw it records it: unchanged for an
    ordinary response; for a background one, a pending row that carries the finished
    response (if it was seen finished) for its own, linked, row."""
    if not background:
        return obs
    done = replace(obs, text=None, parse_errors=0) if finished else None
    return Observation(None, None, obs.response_model, obs.upstream_request_id, "pending",
                       None, None, None, obs.parse_errors, background=done)


def _apply_response(acc: StreamAcc, resp: Any) -> None:
    if not isinstance(resp, dict):
        return
    if isinstance(resp.get("model"), str) and resp["model"]:
        acc.model = resp["model"]
    if resp.get("id"):
        acc.request_id = str(resp["id"])
    usage = resp.get("usage")
    if isinstance(usage, dict):
        acc.usage_raw = usage
        acc.usage = from_openai(usage, responses=True, tier=resp.get("service_tier"),
                                web_searches=web_searches(resp.get("output")))
        acc.cost = provider_cost(usage) or acc.cost
    if resp.get("error"):
        acc.error = error_text(resp["error"])


def web_searches(output: Any) -> int:
    """Billed web searches: `web_search_call` items whose action is a search (or names no
    action). Opening a page or finding in it is part of the same search, not a new one;
    failed calls are not billed."""
    n = 0
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict) or item.get("type") != "web_search_call":
            continue
        action = item.get("action")
        kind = action.get("type") if isinstance(action, dict) else None
        if item.get("status") != "failed" and kind in (None, "search"):
            n += 1
    return n


def _output_text(resp: dict[str, Any], acc: StreamAcc) -> None:
    for item in resp.get("output") or ():
        if not isinstance(item, dict):
            continue
        acc.text.add(item.get("arguments"))
        for part in item.get("content") or ():
            if isinstance(part, dict):
                acc.text.add(part.get("text"))


def _delta_text(obj: dict[str, Any], out: TextBuffer) -> None:
    out.add(obj.get("delta"))


class ResponseStream(BaseStream):
    """The Responses events. `background`: the response says it runs in the background;
    `finished`: its terminal event was seen."""

    __slots__ = ("background", "finished")
    quiet: ClassVar[Screen | None] = Screen(
        (b'"error"', b"event: error", b"response.completed", b"response.incomplete",
         b"response.failed", b"response.created", b"response.in_progress", b"response.queued"))

    def __init__(self) -> None:
        super().__init__()
        self.background = self.finished = False

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        if name in _TEXT_EVENTS or (name is None and b".delta" in data):
            out.add_raw(data, _delta_text)

    def on_frame(self, name: str | None, data: bytes) -> None:
        if name in _TEXT_EVENTS:  # the event line names it: no need to parse now
            self.acc.text.add_raw(data, _delta_text)
            return
        obj = self._load(data)
        if not isinstance(obj, dict):
            return
        kind = obj.get("type") or name
        acc = self.acc
        if kind in _TEXT_EVENTS:
            acc.text.add(obj.get("delta"))
        elif kind in _TERMINAL:
            acc.status = _TERMINAL[kind]
            self.finished = True
            self._read(obj.get("response"))
        elif kind == "error":
            acc.status = "error"
            acc.error = error_text(obj)
        elif kind in ("response.created", "response.in_progress", "response.queued"):
            self._read(obj.get("response"))

    def _read(self, resp: Any) -> None:
        _apply_response(self.acc, resp)
        if isinstance(resp, dict) and resp.get("background") is True:
            self.background = True


class _Stream(ResponseStream):
    """A create's stream: a background response's is recorded as pending."""

    __slots__ = ()

    def result(self) -> Observation:
        return settle(super().result(), self.background, self.finished)


class ResponsesDialect(DialectBase):
    name: ClassVar[str] = "openai.responses"
    text_keys: ClassVar[tuple[str, ...]] = ("instructions", "input")
    text_overhead: ClassVar[int] = 3

    def request_info(self, doc: Any) -> RequestInfo:
        return openai_request_info(doc)

    def from_json(self, doc: Any) -> Observation:
        obs = self.whole(doc)
        if not isinstance(doc, dict):
            return obs
        return settle(obs, doc.get("background") is True, doc.get("status") in FINISHED)

    def whole(self, doc: Any) -> Observation:
        """A whole response object, as it is (background or not)."""
        if not isinstance(doc, dict):
            return Observation(parse_errors=1)
        acc = StreamAcc()
        _apply_response(acc, doc)
        status = doc.get("status")
        acc.status = {"completed": "complete", "incomplete": "incomplete",
                      "failed": "error"}.get(str(status), "complete")
        if doc.get("error") and acc.status == "complete":
            acc.status = "error"
        _output_text(doc, acc)
        return acc.build()

    def new_stream(self) -> _Stream:
        return _Stream()
