"""End to end: the real openai SDK's `audio.transcriptions.create` (every response format,
streamed too), `audio.translations.create` and `audio.speech.create` through the proxy to
a fake OpenAI on 127.0.0.1, with real WAV and MP3 files of known durations. Rows and costs
are checked by hand against OpenAI's published prices."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, sse
from tests.dialects.openai.audio_files import mp3, wav
from tests.e2e.test_ledger_metrics import rows

M = Decimal(1_000_000)
WHISPER_PER_SECOND = Decimal("0.36") / 3600  # $0.006 a minute
TEXT = "The quick brown fox jumps over the lazy dog."
SRT = f"1\n00:00:00,000 --> 00:00:10,000\n{TEXT}\n\n"
VTT = f"WEBVTT\n\n00:00:00.000 --> 00:00:10.000\n{TEXT}\n\n"


def _json(doc: dict[str, Any]) -> Reply:
    return Reply([json.dumps(doc).encode()])


def _plain(text: str, ct: str) -> Reply:
    return Reply([text.encode()], headers={"Content-Type": ct})


WHISPER_REPLIES = {
    "json": _json({"text": TEXT, "usage": {"type": "duration", "seconds": 10}}),
    "verbose_json": _json({"task": "transcribe", "language": "english", "duration": 10.0,
                           "text": TEXT, "segments": [],
                           "usage": {"type": "duration", "seconds": 10}}),
    "text": _plain(TEXT + "\n", "text/plain; charset=utf-8"),
    "srt": _plain(SRT, "application/x-subrip"),
    "vtt": _plain(VTT, "text/vtt; charset=utf-8"),
}


async def _records(proxy: Proxy, n: int) -> list[Any]:
    recs = await proxy.collector.wait_for(n)
    await proxy.app[state.LEDGER].flush()
    return recs


@pytest.mark.parametrize("fmt", list(WHISPER_REPLIES))
async def test_whisper_every_response_format_is_billed_by_the_second(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks, fmt: str) -> None:
    """A 10-second WAV (320 KB: read off the event loop): 10 s at $0.006 a minute, from
    the reported `usage.seconds` (json, verbose_json) or measured from the upload (text,
    srt, vtt, which carry no usage): never $0."""
    audio = wav(10.0)
    upstream.on("/v1/audio/transcriptions", WHISPER_REPLIES[fmt])
    oa = sdk.openai(f"{proxy.url}/openai/v1", default_headers={"X-Meter-Agent": "scribe"})
    out = await oa.audio.transcriptions.create(model="whisper-1", file=("talk.wav", audio),
                                               response_format=fmt)
    got = out if isinstance(out, str) else out.text
    assert TEXT in got
    # the upload reached the upstream whole
    assert audio in upstream.requests[-1].body
    (rec,) = await _records(proxy, 1)
    (row,) = rows(proxy)
    assert (row["operation"], row["model"], row["request_model"], row["agent"]) == \
        ("transcription", "whisper-1", "whisper-1", "scribe")
    assert row["outcome"] == "ok" and row["status_code"] == 200
    assert row["usage_source"] == ("reported" if fmt in ("json", "verbose_json")
                                   else "measured")
    assert row["estimator"] is None
    assert json.loads(row["priced_units"]) == {"audio_seconds": 10, "input_audio_seconds": 10}
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)
    assert Decimal(repr(row["cost_usd"])) == 10 * WHISPER_PER_SECOND
    assert rec.cost_usd == 10 * WHISPER_PER_SECOND


async def test_mp3_translation_is_measured(upstream: FakeUpstream, proxy: Proxy,
                                           sdk: Sdks) -> None:
    """translations, an MP3 of 4.4 s, text format: billed 4 s (nearest second)."""
    upstream.on("/v1/audio/translations", _plain(TEXT, "text/plain"))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    with pytest.warns(DeprecationWarning):  # the SDK still sends it, and warns
        out = await oa.audio.translations.create(model="whisper-1",
                                                 file=("talk.mp3", mp3(4.4)),
                                                 response_format="text")
    assert out.strip() == TEXT
    (rec,) = await _records(proxy, 1)
    assert (rec.operation, rec.usage_source, rec.priced_units) == \
        ("transcription", "measured", {"audio_seconds": 4, "input_audio_seconds": 4})
    assert rec.cost_usd == 4 * WHISPER_PER_SECOND


async def test_azure_deployment_path(upstream: FakeUpstream, start_proxy: Any,
                                     sdk: Sdks) -> None:
    """Azure: the deployment in the path names the model; a `text` answer is measured."""
    proxy = await start_proxy(upstreams={"azure": {"url": upstream.url,
                                                   "dialect": "openai"}})
    upstream.on("/openai/deployments/whisper-1/audio/transcriptions", _plain(TEXT, "text/plain"))
    oa = sdk.openai(f"{proxy.url}/azure/openai/deployments/whisper-1")
    await oa.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(3.0)),
                                         response_format="text")
    (rec,) = await _records(proxy, 1)
    assert (rec.operation, rec.model, rec.usage_source) == ("transcription", "whisper-1",
                                                            "measured")
    assert rec.cost_usd == 3 * WHISPER_PER_SECOND


TOKENS_USAGE = {"type": "tokens", "input_tokens": 180,
                "input_token_details": {"text_tokens": 13, "audio_tokens": 167},
                "output_tokens": 11, "total_tokens": 191}


async def test_token_billed_transcription_json(upstream: FakeUpstream, proxy: Proxy,
                                               sdk: Sdks) -> None:
    upstream.on("/v1/audio/transcriptions", _json({"text": TEXT, "usage": TOKENS_USAGE}))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    out = await oa.audio.transcriptions.create(model="gpt-4o-transcribe",
                                               file=("a.mp3", mp3(10.0)))
    assert out.text == TEXT
    (rec,) = await _records(proxy, 1)
    assert (rec.usage_source, rec.input_tokens, rec.output_tokens, rec.priced_units) == \
        ("reported", 180, 11, {"input_audio_tokens": 167})
    # 13 text x $2.50 + 167 audio x $6 + 11 out x $10 per million
    assert rec.cost_usd == (13 * Decimal("2.5") + 167 * 6 + 11 * 10) / M
    assert json.loads(rec.usage_raw or "") == TOKENS_USAGE


async def test_token_billed_transcription_stream(upstream: FakeUpstream, proxy: Proxy,
                                                 sdk: Sdks) -> None:
    """stream=True: usage on `transcript.text.done`; the events reach the SDK unchanged."""
    usage = {"type": "tokens", "input_tokens": 50,
             "input_token_details": {"text_tokens": 0, "audio_tokens": 50},
             "output_tokens": 9, "total_tokens": 59}
    events = sse('data: {"type":"transcript.text.delta","delta":"The quick"}',
                 'data: {"type":"transcript.text.delta","delta":" brown fox"}',
                 "data: " + json.dumps({"type": "transcript.text.done",
                                        "text": "The quick brown fox", "usage": usage}))
    upstream.on("/v1/audio/transcriptions",
                Reply(events, headers={"Content-Type": "text/event-stream"}))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    stream = await oa.audio.transcriptions.create(model="gpt-4o-mini-transcribe",
                                                  file=("a.wav", wav(3.0)), stream=True)
    kinds = [ev.type async for ev in stream]
    assert kinds == ["transcript.text.delta", "transcript.text.delta",
                     "transcript.text.done"]
    (rec,) = await _records(proxy, 1)
    assert rec.stream and rec.usage_source == "reported"
    assert (rec.input_tokens, rec.output_tokens) == (50, 9)
    # gpt-4o-mini-transcribe: 50 audio in x $3 + 9 out x $5 per million
    assert rec.cost_usd == (50 * 3 + 9 * 5) / M


async def test_token_billed_transcription_text_is_estimated_and_marked(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks) -> None:
    """`text` from a token-billed model: no usage; input audio tokens estimated from the
    measured 6 s (1,000 a minute: 100), output from the transcript; marked estimated."""
    upstream.on("/v1/audio/transcriptions", _plain(TEXT, "text/plain"))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    await oa.audio.transcriptions.create(model="gpt-4o-transcribe",
                                         file=("a.wav", wav(6.0)), response_format="text")
    (rec,) = await _records(proxy, 1)
    assert rec.usage_source == "estimated"
    assert rec.estimator is not None and "audio-duration" in rec.estimator
    assert rec.input_tokens == 100 and rec.priced_units == {"input_audio_tokens": 100}
    assert rec.output_tokens is not None and rec.output_tokens > 0
    # 100 audio in x $6 + the estimated output x $10 per million
    assert rec.cost_usd == (100 * 6 + rec.output_tokens * 10) / M


@pytest.mark.parametrize("model, per_million", [("tts-1", 15), ("tts-1-hd", 30)])
async def test_tts_is_billed_by_characters(upstream: FakeUpstream, proxy: Proxy, sdk: Sdks,
                                           model: str, per_million: int) -> None:
    audio = mp3(2.0)
    upstream.on("/v1/audio/speech", Reply([audio[:1000], audio[1000:]],
                                          headers={"Content-Type": "audio/mpeg"}))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    text = "Grüße aus Köln — hello!"  # 23 characters
    out = await oa.audio.speech.create(model=model, voice="alloy", input=text)
    assert out.content == audio  # the audio reaches the client byte for byte
    (rec,) = await _records(proxy, 1)
    (row,) = rows(proxy)
    assert (row["operation"], row["usage_source"], row["model"]) == ("speech", "measured",
                                                                     model)
    assert json.loads(row["priced_units"]) == {"input_characters": 23}
    assert rec.cost_usd == 23 * per_million / M


async def test_gpt_4o_mini_tts_sse_usage(upstream: FakeUpstream, proxy: Proxy,
                                         sdk: Sdks) -> None:
    events = sse('data: {"type":"speech.audio.delta","audio":"SUQzBAAAAAAA"}',
                 'data: {"type":"speech.audio.done","usage":{"input_tokens":17,'
                 '"output_tokens":320,"total_tokens":337}}')
    upstream.on("/v1/audio/speech", Reply(events, headers={"Content-Type": "text/event-stream"}))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    out = await oa.audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input=TEXT,
                                       stream_format="sse")
    assert out.content == b"".join(events)
    (rec,) = await _records(proxy, 1)
    assert (rec.stream, rec.usage_source, rec.input_tokens, rec.output_tokens) == \
        (True, "reported", 17, 320)
    # gpt-4o-mini-tts: $0.60 text in, $12 audio out per million
    assert rec.cost_usd == (17 * Decimal("0.6") + 320 * 12) / M


async def test_gpt_4o_mini_tts_audio_is_counted_and_estimated(upstream: FakeUpstream,
                                                              proxy: Proxy,
                                                              sdk: Sdks) -> None:
    """Plain audio back: input tokens counted from `input`, output audio tokens estimated
    from the returned MP3's 4.4 s (1,250 a minute: 92), both marked."""
    upstream.on("/v1/audio/speech", Reply([mp3(4.4)], headers={"Content-Type": "audio/mpeg"}))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    await oa.audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input=TEXT)
    (rec,) = await _records(proxy, 1)
    assert rec.usage_source == "estimated"
    assert rec.estimator == "tiktoken:o200k_base+audio-duration"
    assert rec.input_tokens == 10  # o200k_base: the pangram is 10 tokens
    assert rec.output_tokens == math.ceil(4.4 * 1250 / 60) == 92
    assert rec.cost_usd == (10 * Decimal("0.6") + 92 * 12) / M


async def test_upstream_error_is_not_billed(upstream: FakeUpstream, proxy: Proxy,
                                            sdk: Sdks) -> None:
    import openai

    upstream.on("/v1/audio/transcriptions", Reply(
        [b'{"error":{"message":"bad file","type":"invalid_request_error"}}'], status=400))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    with pytest.raises(openai.BadRequestError):
        await oa.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(1.0)),
                                             response_format="text")
    (rec,) = await _records(proxy, 1)
    assert (rec.outcome, rec.usage_source, rec.cost_usd) == ("upstream_error", "none", None)


async def test_gemini_tts_through_generate_content_is_priced(upstream: FakeUpstream,
                                                             proxy: Proxy) -> None:
    """Gemini TTS answers generateContent with inline audio and AUDIO candidate tokens:
    priced at the TTS model's output rate (gemini-2.5-flash-preview-tts: $0.50 in, $10 out
    per million), not left unpriced."""
    import aiohttp

    answer = {"candidates": [{"content": {"role": "model", "parts": [{"inlineData": {
        "mimeType": "audio/L16;codec=pcm;rate=24000", "data": "AAAAAAAA"}}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 175,
                          "totalTokenCount": 184,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
                          "candidatesTokensDetails": [{"modality": "AUDIO",
                                                       "tokenCount": 175}]},
        "modelVersion": "gemini-2.5-flash-preview-tts", "responseId": "r-tts-1"}
    path = "/v1beta/models/gemini-2.5-flash-preview-tts:generateContent"
    upstream.on(path, _json(answer))
    body = {"contents": [{"parts": [{"text": "Say cheerfully: have a wonderful day!"}]}],
            "generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": {
                "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}}}}
    async with aiohttp.ClientSession() as s, \
            s.post(f"{proxy.url}/gemini{path}", json=body,
                   headers={"x-goog-api-key": "g-test"}) as r:
        assert r.status == 200 and (await r.json()) == answer
    (rec,) = await _records(proxy, 1)
    assert (rec.operation, rec.model, rec.usage_source) == \
        ("generate_content", "gemini-2.5-flash-tts", "reported")
    assert rec.priced_units == {"output_audio_tokens": 175}
    assert rec.cost_usd == (9 * Decimal("0.5") + 175 * 10) / M
