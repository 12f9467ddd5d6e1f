"""OpenAI audio: `audio/transcriptions` and `audio/translations` (multipart uploads,
operation `transcription`) and `audio/speech` (operation `speech`), Azure deployment paths
included. Sans-IO: the upload is read from its bytes, the audio's duration by mutagen on a
BytesIO (`audio_seconds`), and every number is named as genai-prices names it.

How each call is billed, and where the number comes from:

- per-duration models (whisper-1): `usage.seconds` (`{"type": "duration"}`) when the
  response carries it (json, verbose_json; verbose_json's `duration` otherwise), else the
  uploaded audio's duration, measured (`usage_source` `measured`), as `audio_seconds` and
  `input_audio_seconds`. OpenAI bills whisper "rounded to the nearest second": measured
  durations are rounded so (reported ones are kept as reported).
- token-billed models (gpt-4o-transcribe, gpt-4o-mini-transcribe): `usage`
  (`{"type": "tokens"}`: input with `input_token_details.audio_tokens`, output) from the
  JSON body or the stream's `transcript.text.done` event. text/srt/vtt bodies carry no
  usage: input audio tokens are estimated from the measured duration
  (AUDIO_TOKENS_PER_SECOND) and output from the transcript text, both marked estimated.
- speech, tts-1/-hd: the characters of `input`, exact (`input_characters`, `measured`);
  gpt-4o-mini-tts: the SSE stream's `speech.audio.done` usage with `stream_format: sse`,
  else input tokens counted from `input` and `instructions` and output audio tokens
  estimated from the returned audio's duration (AUDIO_TOKENS_PER_SECOND).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
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
from proxy.usage import Usage, as_int, dig, units

__all__ = ["AUDIO_TOKENS_PER_SECOND", "DURATION_FORMATS", "SpeechDialect",
           "TranscriptionDialect", "audio_seconds", "read_multipart"]

# OpenAI's pricing page gives each token-billed audio model an "estimated cost per minute"
# beside its per-token price: gpt-4o-transcribe $0.006/min at $6 per million audio input
# tokens, gpt-4o-mini-transcribe $0.003/min at $3, gpt-4o-mini-tts $0.015/min at $12 per
# million audio output tokens: 1,000 input and 1,250 output audio tokens a minute.
AUDIO_TOKENS_PER_SECOND = {"input": 1000 / 60, "output": 1250 / 60}
# What mutagen reads a duration from (WebM/Matroska it cannot: such uploads are estimated
# only where the response reports nothing, and stay unpriced for per-second models).
DURATION_FORMATS = ("wav", "mp3", "flac", "ogg", "opus", "m4a", "mp4", "aac", "aiff")
# Raw PCM from `audio/speech` (`response_format: pcm`): 24 kHz, 16-bit, mono.
_PCM_BYTES_PER_SECOND = 24_000 * 2
_FIELDS = frozenset({"model", "response_format", "stream", "prompt", "language"})
_DISPOSITION = re.compile(rb'(?i)content-disposition:[^\r\n]*?\bname="([^"]*)"'
                          rb'(?:[^\r\n]*?\bfilename="([^"]*)")?')
_BOUNDARY = re.compile(r'(?i)boundary=(?:"([^"]+)"|([^;\s]+))')


class _View(io.RawIOBase):
    """A read-only file over a slice of a buffer: mutagen reads the upload where it lies
    in the request body, no copy of the file is made."""

    def __init__(self, data: memoryview) -> None:
        self._data, self._pos = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        chunk = self._data[self._pos:self._pos + len(buf)]
        n = len(chunk)
        buf[:n] = chunk
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def audio_seconds(data: bytes | memoryview) -> float | None:
    """The duration of an audio file in seconds, read by mutagen from its bytes (headers
    and frames, never decoded); None when mutagen cannot tell (unknown format, WebM)."""
    if not data:
        return None
    import mutagen

    try:
        f = mutagen.File(_View(memoryview(data)))
    except Exception:  # mutagen raises its own errors, and struct/EOF ones on bad bytes
        return None
    length = getattr(getattr(f, "info", None), "length", None)
    if not isinstance(length, int | float) or not length > 0 or not math.isfinite(length):
        return None
    return float(length)


def read_multipart(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    """The form fields of a multipart upload that matter for metering (model,
    response_format, stream, prompt, language), plus the uploaded file's duration
    (`audio_seconds`, None when unreadable) and name. None when the body is not a
    multipart form. Parts are found by byte search and the file is read where it lies
    (a memoryview): nothing of it is copied."""
    m = _BOUNDARY.search(content_type or "")
    if m is None or "multipart/form-data" not in (content_type or "").lower():
        return None
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    view = memoryview(body)
    doc: dict[str, Any] = {"audio_seconds": None, "filename": None}
    pos = body.find(delimiter)
    while pos >= 0:
        start = pos + len(delimiter)
        if body[start:start + 2] == b"--":
            break  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0:
            break
        nxt = body.find(b"\r\n" + delimiter, head_end + 4)
        end = nxt if nxt >= 0 else len(body)
        disposition = _DISPOSITION.search(body, start, head_end)
        if disposition is not None:
            name = disposition.group(1).decode("utf-8", "replace")
            if disposition.group(2) is not None or name == "file":
                doc["filename"] = (disposition.group(2) or b"").decode("utf-8", "replace")
                doc["audio_seconds"] = audio_seconds(view[head_end + 4:end])
            elif name in _FIELDS:
                doc[name] = body[head_end + 4:end].decode("utf-8", "replace")
        pos = nxt + 2 if nxt >= 0 else -1
    stream = doc.get("stream")
    doc["stream"] = isinstance(stream, str) and stream.strip().lower() == "true"
    return doc


def _whole_seconds(seconds: float) -> int:
    """Rounded to the nearest second as OpenAI bills whisper; a non-empty file is 1 s."""
    return max(1, math.floor(seconds + 0.5))


def _seconds(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value) if float(value).is_integer() else float(value)


def _duration_usage(seconds: int | float) -> Usage:
    # genai-prices' OpenAI extractor maps `usage.seconds` to `audio_seconds`; the input
    # part is named too (it is the input audio), as its Usage needs the parent beside it.
    return Usage(0, 0, 0, None, 0, None,
                 {"audio_seconds": seconds, "input_audio_seconds": seconds})  # type: ignore[dict-item]


def transcription_usage(u: Any, duration: Any = None) -> Usage | None:
    """`usage` of a transcription (tokens or duration), else verbose_json's `duration`."""
    if isinstance(u, dict) and u.get("type") == "duration" or \
            isinstance(u, dict) and "seconds" in u and "input_tokens" not in u:
        secs = _seconds(u.get("seconds"))
        return _duration_usage(secs) if secs is not None else None
    if isinstance(u, dict) and ("input_tokens" in u or "output_tokens" in u):
        inp, out = as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))
        audio = as_int(dig(u, "input_token_details", "audio_tokens"))
        return Usage(inp, 0 if inp is not None else None, 0 if inp is not None else None,
                     None, out, None, units(input_audio_tokens=audio))
    secs = _seconds(duration)
    return _duration_usage(secs) if secs is not None else None


def _transcript_text(body: bytes, out: TextBuffer) -> None:
    """The words of a text/srt/vtt body (cue numbers, timings and the header left out)."""
    for line in body.decode("utf-8", "replace").splitlines():
        s = line.strip()
        if not s or s.isdigit() or "-->" in s or s == "WEBVTT":
            continue
        out.add(s + "\n")


class _TranscriptStream(BaseStream):
    """`transcript.text.delta` ... `transcript.text.done` (with usage)."""

    __slots__ = ()

    def on_frame(self, name: str | None, data: bytes) -> None:
        obj = self._load(data)
        if not isinstance(obj, dict):
            return
        kind = obj.get("type", name)
        acc = self.acc
        if kind == "transcript.text.delta":
            acc.text.add(obj.get("delta"))
        elif kind == "transcript.text.done":
            acc.status = "complete"
            if isinstance(obj.get("usage"), dict):
                acc.usage_raw, acc.usage = obj["usage"], transcription_usage(obj["usage"])
        elif kind == "error" or obj.get("error") is not None:
            acc.status, acc.error = "error", error_text(obj.get("error") or obj)


class _SpeechStream(BaseStream):
    """`speech.audio.delta` (base64 audio) ... `speech.audio.done` (with usage)."""

    __slots__ = ()
    quiet: ClassVar[Screen | None] = Screen((b"speech.audio.done", b"error"))

    def on_frame(self, name: str | None, data: bytes) -> None:
        obj = self._load(data)
        if not isinstance(obj, dict):
            return
        kind = obj.get("type", name)
        if kind == "speech.audio.done":
            self.acc.status = "complete"
            u = obj.get("usage")
            if isinstance(u, dict):
                inp, out = as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))
                self.acc.usage_raw = u
                self.acc.usage = Usage(inp, 0 if inp is not None else None,
                                       0 if inp is not None else None, None, out)
        elif kind == "error" or obj.get("error") is not None:
            self.acc.status, self.acc.error = "error", error_text(obj.get("error") or obj)


def _str(doc: dict[str, Any], key: str) -> str | None:
    v = doc.get(key)
    return v if isinstance(v, str) else None


class TranscriptionDialect(DialectBase):
    """`audio/transcriptions` and `audio/translations`: the request is a multipart form."""

    name: ClassVar[str] = "openai.transcription"
    reads_body: ClassVar[bool] = True

    def read_body(self, body: bytes, content_type: str | None) -> Any:
        return read_multipart(body, content_type)

    def request_info(self, doc: Any) -> RequestInfo:
        if not isinstance(doc, dict):
            return RequestInfo()
        return RequestInfo(_str(doc, "model"), doc.get("stream") is True)

    def from_body(self, body: bytes, content_type: str | None) -> Observation:
        if "json" in (content_type or "").lower():
            return super().from_body(body, content_type)
        acc = StreamAcc(status="complete")  # text, srt, vtt: the transcript, no usage
        _transcript_text(body, acc.text)
        return acc.build()

    def from_json(self, doc: Any) -> Observation:
        if not isinstance(doc, dict):
            return Observation(parse_errors=1)
        acc = StreamAcc(status="complete")
        if doc.get("error") is not None:
            acc.status, acc.error = "error", error_text(doc["error"])
        acc.text.add(doc.get("text"))
        u = doc.get("usage")
        acc.usage = transcription_usage(u, doc.get("duration"))
        if acc.usage is not None:
            acc.usage_raw = u if isinstance(u, dict) else {"duration": doc.get("duration")}
        return acc.build()

    def new_stream(self) -> _TranscriptStream:
        return _TranscriptStream()

    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int:
        return 0  # only audio goes in: estimated from its duration in settle()

    def settle(self, doc: Any, obs: Observation) -> Observation:
        """No usage in the response (text, srt, vtt): the upload's measured duration. A
        per-second model is billed by it exactly; a token-billed one (its name says
        `transcribe`) gets its input audio tokens estimated from it."""
        if obs.usage is not None or not isinstance(doc, dict):
            return obs
        secs, model = doc.get("audio_seconds"), _str(doc, "model") or ""
        if not isinstance(secs, float):
            return obs
        if "transcribe" in model:  # gpt-4o-transcribe, gpt-4o-mini-transcribe: tokens
            audio = math.ceil(secs * AUDIO_TOKENS_PER_SECOND["input"])
            return replace(obs, usage=Usage(audio, 0, 0, None, None, None,
                                            {"input_audio_tokens": audio}),
                           input_estimator="audio-duration")
        return replace(obs, usage=_duration_usage(_whole_seconds(secs)), measured=True)


class SpeechDialect(DialectBase):
    """`audio/speech`: a JSON request; the response is audio bytes or, with
    `stream_format: sse`, SSE events whose last one reports usage."""

    name: ClassVar[str] = "openai.speech"
    text_keys: ClassVar[tuple[str, ...]] = ("input", "instructions")

    def request_info(self, doc: Any) -> RequestInfo:
        if not isinstance(doc, dict):
            return RequestInfo()
        return RequestInfo(_str(doc, "model"), doc.get("stream_format") == "sse")

    def from_body(self, body: bytes, content_type: str | None) -> Observation:
        ct = (content_type or "").lower()
        if "json" in ct:
            return super().from_body(body, content_type)
        # Audio: no usage. Its duration, for an estimate of output audio tokens.
        secs = len(body) / _PCM_BYTES_PER_SECOND if "pcm" in ct else audio_seconds(body)
        if secs is None:
            return Observation(status="complete")
        out = math.ceil(secs * AUDIO_TOKENS_PER_SECOND["output"])
        return Observation(Usage(None, None, None, None, out), status="complete",
                           output_estimator="audio-duration")

    def from_json(self, doc: Any) -> Observation:
        if isinstance(doc, dict) and doc.get("error") is not None:
            return Observation(status="error", error=error_text(doc["error"]))
        return Observation(status="complete")

    def new_stream(self) -> _SpeechStream:
        return _SpeechStream()

    def settle(self, doc: Any, obs: Observation) -> Observation:
        """tts-1/-hd bill the characters of `input`: counted exactly. Others (token-billed,
        gpt-4o-mini-tts) keep the stream's usage, or input is counted by the estimator."""
        model = _str(doc, "model") if isinstance(doc, dict) else None
        text = _str(doc, "input") if isinstance(doc, dict) else None
        if model is None or text is None or not re.match(r"tts-1(?:-hd)?(?:-\d|$)", model):
            return obs
        return replace(obs, usage=Usage(0, 0, 0, None, 0, None,
                                        {"input_characters": len(text)}),
                       measured=True, output_estimator=None)
