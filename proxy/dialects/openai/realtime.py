"""OpenAI Realtime (`/v1/realtime`, Azure's `/openai/realtime?deployment=` and
`/openai/v1/realtime`): one result per `response.done`, priced by modality, and one per
input-audio transcription (`conversation.item.input_audio_transcription.completed`), priced
at the transcription model. GA and beta event names both. Sans-IO: messages in, values out.

Only small messages are parsed: a message's type is read from its first bytes, and audio
deltas (most of a socket's bytes) are passed over unparsed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.dialects.base import Observation, TextBuffer, error_text
from proxy.usage import Usage, as_int, as_str, dig

__all__ = ["RealtimeDialect", "RealtimeSocket", "from_realtime", "from_transcription"]

_TYPE = re.compile(r'"type"\s*:\s*"([^"]{1,80})"')
_HEAD = 256  # the type is nearly always among a message's first bytes
# Deltas of the visible output (GA, then beta names), for the running estimate.
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.output_audio_transcript.delta",
                          "response.text.delta", "response.audio_transcript.delta"})
_STATUS = {"completed": "complete", "cancelled": "incomplete", "incomplete": "incomplete",
           "failed": "error"}


def _type(frame: str) -> str | None:
    m = _TYPE.search(frame, 0, _HEAD) or (_TYPE.search(frame) if len(frame) > _HEAD else None)
    return m.group(1) if m else None


def from_realtime(u: dict[str, Any]) -> Usage:
    """A Realtime response's usage: input and output totals, with their audio and image
    parts and the cached part of each modality (all named as genai-prices names them).
    A cached part is given, even as 0, whenever both its modality and a cache read are:
    the price library needs it to split the cache read."""
    inp, out = as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))
    ind, outd = u.get("input_token_details"), u.get("output_token_details")
    cached = as_int(dig(ind, "cached_tokens")) or 0
    counts: dict[str, int] = {}
    for key, value in (("input_audio_tokens", dig(ind, "audio_tokens")),
                       ("input_image_tokens", dig(ind, "image_tokens")),
                       ("output_audio_tokens", dig(outd, "audio_tokens"))):
        if (n := as_int(value)):
            counts[key] = n
    for modality in ("audio", "image"):
        if f"input_{modality}_tokens" in counts and cached:
            counts[f"cache_{modality}_read_tokens"] = \
                as_int(dig(ind, "cached_tokens_details", f"{modality}_tokens")) or 0
    return Usage(inp, cached if inp is not None else None, 0 if inp is not None else None,
                 None, out, None, counts or None)


def from_transcription(u: dict[str, Any]) -> Usage | None:
    """Input-audio transcription usage: tokens (gpt-4o-transcribe and its kind) or
    seconds of audio (whisper-1), rounded up to whole seconds."""
    if u.get("type") == "duration" or ("seconds" in u and "input_tokens" not in u):
        seconds = u.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            return None
        whole = int(-(-seconds // 1))
        return Usage(0, 0, 0, None, 0, None, {"input_audio_seconds": whole} if whole else None)
    inp, out = as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))
    if inp is None and out is None:
        return None
    audio = as_int(dig(u, "input_token_details", "audio_tokens"))
    return Usage(inp, 0 if inp is not None else None, 0 if inp is not None else None, None,
                 out if out is not None else 0, None,
                 {"input_audio_tokens": audio} if audio else None)


@dataclass
class _Running:
    """A response between its `response.created` and its `response.done`."""

    model: str | None
    text: TextBuffer = field(default_factory=TextBuffer)


class RealtimeSocket:
    """One Realtime socket's state: the session's model and transcription model (from the
    URL, then as the session reports or the client updates them), the responses running."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.transcription_model: str | None = None
        self.session_id: str | None = None  # the provider's session id (`sess_...`)
        self.running: dict[str, _Running] = {}
        self.parse_errors = 0

    def _load(self, frame: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(frame)
        except ValueError:
            self.parse_errors += 1
            return None
        return doc if isinstance(doc, dict) else None

    def on_client(self, frame: str | bytes) -> list[Observation]:
        if isinstance(frame, str) and _type(frame) == "session.update":
            doc = self._load(frame)
            if doc is not None:
                self._session(doc.get("session"))
        return []

    def on_server(self, frame: str | bytes) -> list[Observation]:
        if not isinstance(frame, str):
            return []
        kind = _type(frame)
        if kind is None:
            return []
        if kind in _TEXT_DELTAS:
            doc = self._load(frame)
            if doc is not None and (r := self.running.get(str(doc.get("response_id")))):
                r.text.add(doc.get("delta"))
            return []
        if kind == "response.created":
            doc = self._load(frame)
            rid = as_str(dig(doc, "response", "id"))
            if rid is not None:
                self.running.setdefault(rid, _Running(self.model))
            return []
        if kind == "response.done":
            doc = self._load(frame)
            return [self._done(doc["response"])] if doc and isinstance(
                doc.get("response"), dict) else []
        if kind == "conversation.item.input_audio_transcription.completed":
            doc = self._load(frame)
            return [self._transcribed(doc)] if doc is not None else []
        if kind in ("session.created", "session.updated"):
            doc = self._load(frame)
            if doc is not None:
                self._session(doc.get("session"))
        return []

    def close(self) -> list[Observation]:
        """The responses still running: each a result without usage, `incomplete`."""
        out = [Observation(None, None, r.model, rid, "incomplete", None, r.text,
                           operation="realtime") for rid, r in self.running.items()]
        self.running.clear()
        return out

    def progress(self) -> dict[str, Observation]:
        """The responses running now, each with its visible output so far."""
        return {rid: Observation(None, None, r.model, rid, "unknown", None, r.text,
                                 operation="realtime") for rid, r in self.running.items()}

    def _session(self, session: Any) -> None:
        if not isinstance(session, dict):
            return
        self.model = as_str(session.get("model")) or self.model
        if session.get("object") in ("realtime.session", None) and as_str(session.get("id")):
            self.session_id = session["id"]
        transcription = dig(session, "audio", "input", "transcription")  # GA
        if not isinstance(transcription, dict):
            transcription = session.get("input_audio_transcription")  # beta
        if isinstance(transcription, dict):
            self.transcription_model = as_str(transcription.get("model")) \
                or self.transcription_model

    def _done(self, resp: dict[str, Any]) -> Observation:
        rid = as_str(resp.get("id"))
        running = self.running.pop(rid, None) if rid is not None else None
        raw = resp.get("usage")
        usage = from_realtime(raw) if isinstance(raw, dict) else None
        status = _STATUS.get(str(resp.get("status")), "unknown")
        error = None
        if status == "error":
            error = error_text(dig(resp, "status_details", "error")
                               or dig(resp, "status_details") or "failed")
        model = as_str(resp.get("model")) or (running.model if running else self.model)
        errors, self.parse_errors = self.parse_errors, 0
        return Observation(usage, raw if usage is not None else None, model, rid,
                           status, error, running.text if running else None, parse_errors=errors,
                           operation="realtime")

    def _transcribed(self, doc: dict[str, Any]) -> Observation:
        raw = doc.get("usage")
        usage = from_transcription(raw) if isinstance(raw, dict) else None
        return Observation(usage, raw if usage is not None else None, self.transcription_model,
                           as_str(doc.get("item_id")), "complete", operation="transcription")


class RealtimeDialect:
    name = "openai.realtime"

    def new_socket(self, query: Mapping[str, str], path_model: str | None) -> RealtimeSocket:
        return RealtimeSocket(query.get("model") or query.get("deployment") or path_model)

    def refusal(self, frame: str | bytes, message: str,
                code: str = "budget_exceeded") -> str | None:
        """The Realtime `error` event answering a `response.create` a budget or a rate
        limit refused (`code`: `budget_exceeded` or `rate_limit_exceeded`)."""
        if not isinstance(frame, str) or _type(frame) != "response.create":
            return None
        try:
            asked = json.loads(frame)
        except ValueError:
            asked = None
        event_id = asked.get("event_id") if isinstance(asked, dict) else None
        return json.dumps({
            "type": "error", "event_id": f"event_tb{os.urandom(10).hex()}",
            "error": {"type": "invalid_request_error", "code": code,
                      "message": message, "param": None, "event_id": event_id}})
