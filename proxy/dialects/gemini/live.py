"""Gemini Live: the `BidiGenerateContent` WebSocket (AI Studio and Vertex AI), read frame by
frame as the socket relays it. One Observation per completed model turn.

Usage. The server's `usageMetadata` (top level of a server message, beside at most one other
field) counts one turn, not the session so far: in a live probe of three-turn sessions on
gemini-3.1-flash-live-preview and gemini-2.5-flash-native-audio-latest the response count
stayed flat (19, 24, 24) while the prompt grew with the history each turn re-reads (143,
181, 224), so each turn is billed on its own (pydantic/pydantic-ai PR 7269, review thread
on `realtime/google.py`). Several usage messages in one turn are read as snapshots of that
turn: the last wins, nothing is summed. AI Studio names the output `responseTokenCount` /
`responseTokensDetails`, Vertex `candidatesTokenCount` / `candidatesTokensDetails`; both
break counts down by modality (text, audio, image, video), priced by genai-prices' units.

Turns. A turn opens with the model's first output for it (`serverContent` with a model turn,
an output transcription or grounding, a `toolCall`, or its usage) and ends at
`serverContent.turnComplete`; `generationComplete` (the model is done, playback may go
on) makes a turn cut before `turnComplete` still count as complete, `interrupted` (the user
spoke over it) ends it as incomplete. Usage may come with `turnComplete` or on a later
message (with a `sessionResumptionUpdate`): a turn that completes without usage is held
until usage or the next turn's output arrives. `close()` gives the turn still running, and
a generation the client asked for (`clientContent.turnComplete`, `toolResponse`,
`realtimeInput.activityEnd`, camelCase or snake_case) that had no answer yet, with
whatever usage is known (None: unknown).

Session: `setupComplete.sessionId`, else a fingerprint of the first
`sessionResumptionUpdate.newHandle` (a handle resumes the session's context, so it is not
written down itself). Model: `setup.model` of the client's first message. Audio frames both
ways (base64 `inlineData`, `realtimeInput` chunks) are recognised by literal search and
never parsed. Sans-IO.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any, AnyStr, ClassVar

from proxy.dialects.base import Observation, TextBuffer, loads
from proxy.dialects.gemini.usage import from_gemini
from proxy.usage import Usage

__all__ = ["DIALECT", "LiveDialect", "LiveState", "from_live", "is_live_path", "socket_dialect"]

# AI Studio: /ws/google.ai.generativelanguage.{v1|v1beta|v1alpha}.GenerativeService.
# BidiGenerateContent (…Constrained with an ephemeral token); Vertex AI:
# /ws/google.cloud.aiplatform.{v1|v1beta1}.LlmBidiService/BidiGenerateContent. Any prefix
# (an upstream's base path) may come before.
_PATH = re.compile(
    r"(?:^|/)ws/(?:google\.ai\.generativelanguage\.[A-Za-z0-9]+\.GenerativeService\."
    r"BidiGenerateContent(?:Constrained)?"
    r"|google\.cloud\.aiplatform\.[A-Za-z0-9]+\.LlmBidiService/BidiGenerateContent)$")

# Keys that make a frame worth parsing. Base64 holds no quote, so a quoted key is never
# found inside audio; a false hit only costs a parse.
# Client keys in both spellings proto JSON accepts: google-genai (Python) sends
# `realtime_input`, `client_content`, `tool_response`; the documented wire and the JS SDK
# camelCase.
_CLIENT_KEYS = ('"setup"', '"clientContent"', '"client_content"', '"toolResponse"',
                '"tool_response"', '"activityEnd"', '"activity_end"')
_SERVER_KEYS = ('"usageMetadata"', '"turnComplete"', '"generationComplete"', '"interrupted"',
                '"setupComplete"', '"sessionResumptionUpdate"', '"toolCall"', '"error"',
                '"turnCompleteReason"')
_MEDIA = '"inlineData"'
_CLIENT_KEYS_B = tuple(k.encode() for k in _CLIENT_KEYS)
_SERVER_KEYS_B = tuple(k.encode() for k in _SERVER_KEYS)
_MEDIA_B = _MEDIA.encode()
# A client message has one field: realtime input holding `data` is an audio or video chunk.
_REALTIME = ('{"realtimeInput"', '{"realtime_input"')
_REALTIME_B = tuple(k.encode() for k in _REALTIME)
# turnCompleteReason values that are not a failure
_BENIGN = frozenset({"TURN_COMPLETE_REASON_UNSPECIFIED", "NEED_MORE_INPUT"})
_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def is_live_path(path: str) -> bool:
    """The path (without query) is a Gemini Live socket, AI Studio's or Vertex's."""
    return _PATH.search(path) is not None


def socket_dialect(path: str) -> Callable[[], LiveState] | None:
    """The per-socket state factory for a Live socket path, else None."""
    return LiveState if is_live_path(path) else None


class LiveDialect:
    """The Live socket as the relay (proxy/sockets.py) meets it: a LiveState per socket.
    Live has no error event that answers one client message and leaves the session up (an
    error closes the socket), so a budget is checked when the socket opens (admission, as
    for HTTP) and nothing is refused mid-session: `refusal` forwards every message."""

    name = "gemini.live"

    def new_socket(self, query: Mapping[str, str], path_model: str | None) -> LiveState:
        state = LiveState()
        state.model = path_model  # the setup message names it (and wins) when it comes
        return state

    def refusal(self, frame: str | bytes, message: str,
                code: str = "budget_exceeded") -> str | None:
        return None


DIALECT = LiveDialect()


def from_live(u: dict[str, Any]) -> Usage:
    """A Live `usageMetadata`: AI Studio's `response*` names read as Vertex's `candidates*`."""
    doc = dict(u)
    if "candidatesTokenCount" not in doc:
        doc["candidatesTokenCount"] = doc.get("responseTokenCount")
    if "candidatesTokensDetails" not in doc:
        doc["candidatesTokensDetails"] = doc.get("responseTokensDetails")
    return from_gemini(doc)


def _has(frame: str | bytes, keys: tuple[str, ...], keys_b: tuple[bytes, ...]) -> bool:
    """A key occurs in the frame outside its `"data"` strings (base64 media)."""
    if isinstance(frame, str):
        return _outside_data(frame, keys, '"data"', '"', ":")
    return _outside_data(frame, keys_b, b'"data"', b'"', b":")


def _outside_data(frame: AnyStr, keys: tuple[AnyStr, ...], data: AnyStr, quote: AnyStr,
                  colon: AnyStr) -> bool:
    """Searching a 10 kB audio frame for nine keys would read it nine times: the keys are
    searched for only between the `"data": "<base64>"` strings, which hold no key (a string
    holds no quote unescaped, and the search resumes at the first quote after the value's
    opening one, inside the string at worst)."""
    pos, end = 0, len(frame)
    while True:
        i = frame.find(data, pos)
        stop = end if i < 0 else i
        if any(frame.find(k, pos, stop) >= 0 for k in keys):
            return True
        if i < 0:
            return False
        pos = i + len(data)
        j = frame.find(quote, pos)
        if j < 0 or frame[pos:j].strip() != colon:
            continue  # not a string value: search on from after the key
        k = frame.find(quote, j + 1)
        if k < 0:
            return False  # unterminated: not JSON, nothing to read
        pos = k + 1


def _model_name(model: object) -> str | None:
    """`models/x` (AI Studio) or `projects/p/locations/l/publishers/google/models/x`."""
    if not isinstance(model, str) or not model:
        return None
    return model.rsplit("/models/", 1)[-1].removeprefix("models/") or None


class _Turn:
    __slots__ = ("usage_raw", "generated", "interrupted", "reason", "error", "text")

    def __init__(self) -> None:
        self.usage_raw: dict[str, Any] | None = None
        self.generated = False  # generationComplete seen
        self.interrupted = False
        self.reason: str | None = None  # a failing turnCompleteReason
        self.error: str | None = None
        self.text = TextBuffer()


class LiveState:
    """One Live socket's reader: `on_client` / `on_server` take each frame as relayed (text
    or binary) and return the turns it completed; `close()` the turn still running."""

    operation: ClassVar[str] = "realtime"

    __slots__ = ("model", "session", "_turn", "_held", "_requested", "_errors")

    def __init__(self) -> None:
        self.model: str | None = None
        self.session: str | None = None
        self._turn: _Turn | None = None  # open: the model is answering
        self._held: _Turn | None = None  # complete, its usage not seen yet
        self._requested = False  # the client asked for a generation, none began yet
        self._errors = 0  # frames that were not JSON, reported with the next turn

    @property
    def session_id(self) -> str | None:
        """The provider's session id (the relay's name for `session`)."""
        return self.session

    @property
    def running(self) -> bool:
        """A turn is under way (the model answers, or an answer was asked for)."""
        return self._turn is not None or self._requested

    # -- client -> server

    def on_client(self, frame: str | bytes) -> list[Observation]:
        if (frame.startswith(_REALTIME) and frame.find('"data"') >= 0
                if isinstance(frame, str) else
                frame.startswith(_REALTIME_B) and frame.find(b'"data"') >= 0):
            return []  # the common case, 50 a second: a media chunk
        if not _has(frame, _CLIENT_KEYS, _CLIENT_KEYS_B):
            return []  # realtimeInput media: nothing in it is billed apart from the turn
        obj = self._load(frame)
        if not isinstance(obj, dict):
            return []
        setup = obj.get("setup")
        if isinstance(setup, dict) and self.model is None:
            self.model = _model_name(setup.get("model"))
        content = _either(obj, "clientContent", "client_content")
        rt = _either(obj, "realtimeInput", "realtime_input")
        if ((isinstance(content, dict)
             and _either(content, "turnComplete", "turn_complete") is True)
                or _either(obj, "toolResponse", "tool_response") is not None
                or (isinstance(rt, dict)
                    and _either(rt, "activityEnd", "activity_end") is not None)):
            if self._turn is None:
                self._requested = True
        return []

    # -- server -> client

    def on_server(self, frame: str | bytes) -> list[Observation]:
        out: list[Observation] = []
        if not _has(frame, _SERVER_KEYS, _SERVER_KEYS_B):
            if (frame.find(_MEDIA) if isinstance(frame, str) else frame.find(_MEDIA_B)) >= 0:
                self._open(out)  # model audio / image output: the turn is under way
                return out
        obj = self._load(frame)
        if not isinstance(obj, dict):
            return out
        done = obj.get("setupComplete")
        if isinstance(done, dict) and isinstance(done.get("sessionId"), str) \
                and done["sessionId"]:
            self.session = done["sessionId"]
        update = obj.get("sessionResumptionUpdate")
        if isinstance(update, dict) and self.session is None:
            handle = update.get("newHandle")
            if isinstance(handle, str) and handle:
                self.session = "gl-" + hashlib.sha256(handle.encode()).hexdigest()[:20]
        content = obj.get("serverContent")
        content = content if isinstance(content, dict) else {}
        if any(k in content for k in ("modelTurn", "outputTranscription", "groundingMetadata")) \
                or "toolCall" in obj:
            self._open(out)
        usage = obj.get("usageMetadata")
        if isinstance(usage, dict):
            if self._turn is None and self._held is not None:
                held, self._held = self._held, None
                held.usage_raw = usage  # the late usage of the turn that just completed
                out.append(self._observe(held, self._status(held)))
            else:
                self._open(out).usage_raw = usage  # a snapshot of this turn: last wins
        if obj.get("error") is not None:
            self._open(out).error = _error(obj["error"])
        turn = self._turn
        if turn is not None:
            _read_content(turn, content)
        if content.get("turnComplete") is True:
            if turn is None and self._requested:
                turn = self._open(out)  # answered with nothing but the end of the turn
                _read_content(turn, content)
            if turn is not None:
                self._turn = None
                if turn.usage_raw is None and turn.error is None:
                    self._held = turn  # its usage may follow on the next message
                else:
                    out.append(self._observe(turn, self._status(turn)))
        return out

    def close(self) -> list[Observation]:
        """The socket closed: the held turn, the running turn, an unanswered request."""
        out: list[Observation] = []
        if self._held is not None:
            held, self._held = self._held, None
            out.append(self._observe(held, self._status(held)))
        turn, self._turn = self._turn, None
        if turn is not None:
            status = "error" if turn.error or turn.reason else \
                "complete" if turn.generated and not turn.interrupted else "incomplete"
            out.append(self._observe(turn, status))
        elif self._requested:
            out.append(self._observe(_Turn(), "incomplete"))
        self._requested = False
        return out

    # -- helpers

    def _open(self, out: list[Observation]) -> _Turn:
        """The running turn, opened now if none is; a held turn's usage never came."""
        if self._turn is None:
            if self._held is not None:
                held, self._held = self._held, None
                out.append(self._observe(held, self._status(held)))
            self._turn = _Turn()
            self._requested = False
        return self._turn

    @staticmethod
    def _status(turn: _Turn) -> str:
        """A turn that reached `turnComplete`."""
        if turn.error is not None or turn.reason is not None:
            return "error"
        return "incomplete" if turn.interrupted else "complete"

    def _observe(self, turn: _Turn, status: str) -> Observation:
        raw = turn.usage_raw
        errors, self._errors = self._errors, 0
        return Observation(usage=from_live(raw) if raw is not None else None, usage_raw=raw,
                           response_model=self.model, status=status,
                           error=turn.error or turn.reason, text=turn.text,
                           parse_errors=errors)

    def _load(self, frame: str | bytes) -> Any:
        try:
            return loads(frame)
        except ValueError:  # UnicodeDecodeError included
            self._errors += 1
            return None


def _either(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _read_content(turn: _Turn, content: dict[str, Any]) -> None:
    if content.get("generationComplete") is True:
        turn.generated = True
    if content.get("interrupted") is True:
        turn.interrupted = True
    reason = content.get("turnCompleteReason")
    if isinstance(reason, str) and reason not in _BENIGN and _REASON.fullmatch(reason):
        turn.reason = reason
    model_turn = content.get("modelTurn")
    parts = model_turn.get("parts") if isinstance(model_turn, dict) else None
    for part in parts if isinstance(parts, list) else ():
        if isinstance(part, dict) and not part.get("thought"):
            turn.text.add(part.get("text"))


def _error(err: Any) -> str:
    """`{code, message, status}`: the status or code only (a message may quote input)."""
    if isinstance(err, dict):
        for key in ("status", "code"):
            value = err.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                text = str(value)
                if _REASON.fullmatch(text) or text.isdigit():
                    return text
    return "error"
