"""The audio dialects, sans-IO: an upload's form fields and duration read from its bytes,
every transcription response format, speech by characters, stream usage, and what is
measured or estimated when the response reports nothing."""

from __future__ import annotations

import math

import pytest

from proxy.dialects.base import Observation
from proxy.dialects.openai.audio import (
    SpeechDialect,
    TranscriptionDialect,
    audio_seconds,
    read_multipart,
)
from proxy.meter import Meter
from tests.dialects.openai.audio_files import mp3, wav

BOUNDARY = "----tb7d3e5c2a"
CT = f"multipart/form-data; boundary={BOUNDARY}"


def form(fields: dict[str, str], file: bytes, filename: str = "speech.wav") -> bytes:
    """A multipart/form-data body as RFC 7578 spells it (CRLF, the file part among the
    fields, binary bytes that may contain CR/LF)."""
    out = b""
    for name, value in fields.items():
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: audio/wav\r\n\r\n").encode()
    out += file + b"\r\n"
    out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n" \
        .encode()
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("make, fmt", [(wav, "wav"), (mp3, "mp3")])
@pytest.mark.parametrize("seconds", [0.3, 3.0, 4.4])
def test_audio_seconds_reads_the_duration_from_bytes(make: object, fmt: str,
                                                     seconds: float) -> None:
    assert callable(make)
    assert audio_seconds(make(seconds)) == pytest.approx(seconds, abs=1e-9), fmt


def test_audio_seconds_of_what_is_not_audio_is_none() -> None:
    assert audio_seconds(b"") is None
    assert audio_seconds(b"not audio at all" * 100) is None
    assert audio_seconds(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None  # a cut header


def test_read_multipart_fields_and_duration() -> None:
    audio = wav(3.0)
    doc = read_multipart(form({"model": "whisper-1", "response_format": "srt",
                               "stream": "false"}, audio), CT)
    assert doc == {"model": "whisper-1", "response_format": "srt", "stream": False,
                   "language": "en", "audio_seconds": 3.0, "filename": "speech.wav"}
    assert TranscriptionDialect().request_info(doc).model == "whisper-1"


def test_read_multipart_quoted_boundary_and_stream_flag() -> None:
    body = form({"model": "gpt-4o-transcribe", "stream": "true"}, mp3(4.4), "a.mp3")
    doc = read_multipart(body, f'multipart/form-data; boundary="{BOUNDARY}"')
    assert doc is not None and doc["stream"] is True and doc["audio_seconds"] == 4.4
    assert TranscriptionDialect().request_info(doc).stream is True


def test_read_multipart_refuses_what_is_not_a_form() -> None:
    assert read_multipart(b'{"model": "whisper-1"}', "application/json") is None
    assert read_multipart(b"", None) is None
    body = form({"model": "whisper-1"}, wav(1.0))
    head = body.index(b"RIFF")
    # cut in the file part's head: no file seen; cut in the WAV's header: no duration
    assert read_multipart(body[:head - 10], CT) == {
        "model": "whisper-1", "stream": False, "audio_seconds": None, "filename": None}
    assert read_multipart(body[:head + 20], CT) == {
        "model": "whisper-1", "stream": False, "audio_seconds": None,
        "filename": "speech.wav"}


def body_obs(dialect: TranscriptionDialect | SpeechDialect, body: bytes,
             content_type: str) -> Observation:
    meter = Meter(dialect, content_type, None)
    for i in range(0, len(body), 7):  # in small chunks, as the socket may give them
        meter.feed(body[i:i + 7])
    return meter.finish()


@pytest.mark.parametrize("fmt, body, ct", [
    ("text", b"Hello world.\n", "text/plain; charset=utf-8"),
    ("srt", b"1\n00:00:00,000 --> 00:00:03,000\nHello world.\n\n", "application/x-subrip"),
    ("vtt", b"WEBVTT\n\n00:00:00.000 --> 00:00:03.000\nHello world.\n\n", "text/vtt"),
])
def test_formats_without_usage_are_measured(fmt: str, body: bytes, ct: str) -> None:
    """No usage in the body: whisper-1 is billed by the upload's duration, measured."""
    d = TranscriptionDialect()
    obs = body_obs(d, body, ct)
    assert obs.usage is None and obs.parse_errors == 0 and obs.status == "complete"
    assert obs.output_text == "Hello world.\n", fmt
    doc = {"model": "whisper-1", "audio_seconds": 3.0}
    settled = d.settle(doc, obs)
    assert settled.measured and settled.usage is not None
    assert settled.usage.priced_units() == {"audio_seconds": 3, "input_audio_seconds": 3}
    # 2.5 s and 2.4 s: OpenAI rounds whisper to the nearest second; a blip is 1 s
    for secs, billed in ((2.5, 3), (2.4, 2), (0.2, 1)):
        u = d.settle({"model": "whisper-1", "audio_seconds": secs}, obs).usage
        assert u is not None and u.units == {"audio_seconds": billed,
                                             "input_audio_seconds": billed}


def test_token_model_without_usage_is_estimated_from_duration() -> None:
    d = TranscriptionDialect()
    obs = body_obs(d, b"Hello world.", "text/plain")
    settled = d.settle({"model": "gpt-4o-transcribe", "audio_seconds": 4.4}, obs)
    # 1,000 audio tokens a minute: 4.4 s -> ceil(73.33) = 74
    assert settled.usage is not None and settled.usage.input_tokens == 74
    assert settled.usage.units == {"input_audio_tokens": 74}
    assert settled.input_estimator == "audio-duration" and not settled.measured


def test_unmeasurable_upload_leaves_usage_unknown() -> None:
    d = TranscriptionDialect()
    obs = body_obs(d, b"Hello.", "text/plain")
    assert d.settle({"model": "whisper-1", "audio_seconds": None}, obs) is obs
    assert d.settle(None, obs) is obs


def test_reported_usage_wins_over_measuring() -> None:
    d = TranscriptionDialect()
    obs = body_obs(d, b'{"text":"hi","usage":{"type":"duration","seconds":2}}',
                   "application/json")
    assert d.settle({"model": "whisper-1", "audio_seconds": 9.0}, obs) is obs
    assert obs.usage is not None and obs.usage.units == {"audio_seconds": 2,
                                                         "input_audio_seconds": 2}


def test_transcription_error_body() -> None:
    obs = body_obs(TranscriptionDialect(),
                   b'{"error":{"type":"invalid_request_error","code":"bad_audio"}}',
                   "application/json")
    assert obs.status == "error" and obs.error == "invalid_request_error:bad_audio"


def test_speech_by_characters_is_measured() -> None:
    d = SpeechDialect()
    text = "Grüße, world! ✓"
    for model in ("tts-1", "tts-1-hd", "tts-1-1106", "tts-1-hd-1106"):
        obs = d.settle({"model": model, "input": text, "voice": "alloy"},
                       body_obs(d, wav(1.0), "audio/wav"))
        assert obs.measured and obs.output_estimator is None
        assert obs.usage is not None and obs.usage.units == {"input_characters": 15}


@pytest.mark.parametrize("ct, body, seconds", [
    ("audio/mpeg", mp3(4.4), 4.4), ("audio/wav", wav(3.0), 3.0),
    ("audio/pcm", b"\x00\x00" * 24_000 * 2, 2.0)])
def test_token_tts_output_is_estimated_from_the_audio(ct: str, body: bytes,
                                                      seconds: float) -> None:
    d = SpeechDialect()
    obs = body_obs(d, body, ct)
    doc = {"model": "gpt-4o-mini-tts", "input": "Hello"}
    assert d.settle(doc, obs) is obs
    assert obs.usage is not None and obs.usage.input_tokens is None
    # 1,250 output audio tokens a minute
    assert obs.usage.output_tokens == math.ceil(seconds * 1250 / 60)
    assert obs.output_estimator == "audio-duration"


def test_speech_of_unreadable_audio_reports_nothing() -> None:
    obs = body_obs(SpeechDialect(), b"\x01\x02opus?", "audio/ogg")
    assert obs.usage is None and obs.status == "complete"


def test_speech_stream_error_event() -> None:
    d = SpeechDialect()
    obs = body_obs(d, b'data: {"type":"error","error":{"type":"server_error"}}\n\n',
                   "text/event-stream")
    assert obs.status == "error" and obs.error == "server_error"
    assert d.request_info({"model": "gpt-4o-mini-tts", "stream_format": "sse"}).stream
