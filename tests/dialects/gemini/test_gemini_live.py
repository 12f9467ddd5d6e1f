"""Gemini Live (`proxy/dialects/gemini/live.py`): recorded-shape sockets fed frame by frame
give one exact observation per completed turn, priced by hand from Google's published Live
prices; the real google-genai live client, against a fake Live server on 127.0.0.1, sends
frames the dialect reads."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from proxy.dialects import PROVIDERS
from proxy.dialects.base import Observation
from proxy.dialects.gemini import live
from proxy.dialects.gemini.live import LiveState
from proxy.pricing import PriceBook
from tests.payloads import expected_usage, usage_dict

ROOT = Path(__file__).parents[2] / "payloads" / "gemini_live"
M = Decimal(1_000_000)
D = Decimal


class SocketState(Protocol):
    """The per-socket interface the WebSocket transport drives (a structural copy)."""

    def on_client(self, frame: str | bytes) -> list[Observation]: ...
    def on_server(self, frame: str | bytes) -> list[Observation]: ...
    def close(self) -> list[Observation]: ...


# Published Live prices, USD per million tokens (ai.google.dev/gemini-api/docs/pricing):
# gemini-live-2.5-flash / gemini-2.5-flash-native-audio: text in 0.50, audio or video in
# 3.00, text out 2.00, audio out 12.00; gemini-3.1-flash-live-preview: text in 0.75, text
# out 4.50 (thoughts and tool-use prompt priced as output and input).
COSTS: dict[str, list[Decimal | None]] = {
    "ai_studio_audio": [
        (305 * D("0.50") + 68 * D("3.00") + 150 * D("12.00")) / M,  # 0.0021565
        (478 * D("0.50") + 118 * D("3.00") + 212 * D("12.00")) / M,  # 0.003137
    ],
    "ai_studio_text_tool": [
        ((210 + 45) * D("0.75") + (31 + 12) * D("4.50")) / M,  # 0.00038475
        (290 * D("0.75") + 9 * D("4.50")) / M,  # 0.000258
        (305 * D("0.75") + 3 * D("4.50")) / M,  # 0.00024225
    ],
    "vertex_video_cut": [
        (52 * D("0.50") + (70 + 1258) * D("3.00") + 26 * D("2.00") + 150 * D("12.00")) / M,
        None,  # cut before its usage: unknown, not zero
    ],
}


def frames(name: str) -> list[tuple[str, str]]:
    """(direction, frame JSON) per line."""
    out = []
    for line in (ROOT / f"{name}.frames").read_text().splitlines():
        direction, _, frame = line.partition(" ")
        assert direction in ("client", "server"), line
        out.append((direction, frame))
    return out


def feed(state: SocketState, seq: list[tuple[str, str | bytes]]) -> list[Observation]:
    out: list[Observation] = []
    for direction, frame in seq:
        out += state.on_client(frame) if direction == "client" else state.on_server(frame)
    return out


def as_sent(seq: list[tuple[str, str]],
            server_binary: bool = True) -> list[tuple[str, str | bytes]]:
    """Client frames as text, server frames as binary (as AI Studio sends them), or the
    other way round."""
    return [(d, f.encode() if (d == "server") == server_binary else f) for d, f in seq]


def check(name: str, turns: list[Observation], closed: list[Observation],
          state: LiveState) -> None:
    exp = json.loads((ROOT / f"{name}.expected.json").read_text())
    got = [{"status": o.status, "error": o.error, "output_text": o.output_text,
            "usage": usage_dict(o)} for o in turns]
    want = [{**t, "usage": expected_usage(t["usage"])} for t in exp["turns"]]
    assert got == want
    got_closed = [{"status": o.status, "error": o.error, "output_text": o.output_text,
                   "usage": usage_dict(o)} for o in closed]
    assert got_closed == [{**t, "usage": expected_usage(t["usage"])} for t in exp["at_close"]]
    assert state.model == exp["model"]
    assert state.session == exp["session"]
    for o in [*turns, *closed]:
        assert o.response_model == exp["model"]
        assert o.parse_errors == 0
    prices = PriceBook()
    costs = [prices.price(o.response_model, "google", o.usage).cost_usd if o.usage else None
             for o in [*turns, *closed]]
    assert costs == COSTS[name]


NAMES = sorted(p.name.removesuffix(".frames") for p in ROOT.glob("*.frames"))


def test_every_payload_has_its_costs() -> None:
    assert NAMES == sorted(COSTS)


@pytest.mark.parametrize("name", NAMES)
def test_recorded_socket_frame_by_frame(name: str) -> None:
    state = LiveState()
    turns = feed(state, as_sent(frames(name)))
    check(name, turns, state.close(), state)
    assert state.close() == []  # closing twice adds nothing


@pytest.mark.parametrize("name", NAMES)
def test_text_or_binary_frames_read_alike(name: str) -> None:
    state = LiveState()
    turns = feed(state, as_sent(frames(name), server_binary=False))
    check(name, turns, state.close(), state)


@pytest.mark.parametrize("name", NAMES)
def test_each_turn_is_returned_by_the_frame_that_completes_it(name: str) -> None:
    """Turns come out as they complete, not at the end: the frame that yields a turn is
    the one carrying its `turnComplete` or, for a turn that completed without usage, its
    late usage."""
    state = LiveState()
    for direction, frame in as_sent(frames(name)):
        got = state.on_client(frame) if direction == "client" else state.on_server(frame)
        if got:
            text = frame.decode() if isinstance(frame, bytes) else frame
            assert direction == "server"
            assert '"turnComplete": true' in text or '"usageMetadata"' in text
            assert all(o.usage is not None for o in got)


# -- turns, edge by edge

USAGE_A = {"promptTokenCount": 100, "responseTokenCount": 20, "totalTokenCount": 120,
           "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 20}]}
USAGE_B = {"promptTokenCount": 130, "responseTokenCount": 50, "totalTokenCount": 180,
           "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 50}]}
AUDIO_OUT = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {
    "mimeType": "audio/pcm;rate=24000", "data": "AAABAAIAAwA="}}]}}}
SETUP = {"setup": {"model": "models/gemini-live-2.5-flash-preview"}}


def server(state: LiveState, *messages: dict[str, Any]) -> list[Observation]:
    out: list[Observation] = []
    for m in messages:
        out += state.on_server(json.dumps(m).encode())
    return out


def started() -> LiveState:
    state = LiveState()
    assert state.on_client(json.dumps(SETUP)) == []
    assert server(state, {"setupComplete": {}}) == []
    return state


def test_usage_snapshots_within_a_turn_are_not_summed() -> None:
    state = started()
    got = server(state, {**AUDIO_OUT, "usageMetadata": USAGE_A}, AUDIO_OUT,
                 {"serverContent": {"turnComplete": True}, "usageMetadata": USAGE_B})
    assert [(o.usage.input_tokens, o.usage.output_tokens) for o in got if o.usage] == [(130, 50)]
    assert got[0].usage_raw == USAGE_B


def test_each_turn_keeps_its_own_usage() -> None:
    """Per-turn usage: the second turn's counts are its own, never added to the first's."""
    state = started()
    first = server(state, AUDIO_OUT, {"serverContent": {"turnComplete": True},
                                      "usageMetadata": USAGE_A})
    second = server(state, AUDIO_OUT, {"serverContent": {"turnComplete": True},
                                       "usageMetadata": USAGE_B})
    assert [o.usage.output_tokens for o in first + second if o.usage] == [20, 50]
    assert [o.usage.units for o in first + second if o.usage] == [
        {"output_audio_tokens": 20}, {"output_audio_tokens": 50}]


def test_a_turn_whose_usage_never_came_is_unknown_not_zero() -> None:
    state = started()
    assert server(state, AUDIO_OUT, {"serverContent": {"turnComplete": True}}) == []
    assert state.running is False
    got = server(state, AUDIO_OUT)  # the next turn begins: the held one is given up on
    assert [(o.status, o.usage) for o in got] == [("complete", None)]
    got = server(state, {"serverContent": {"turnComplete": True}, "usageMetadata": USAGE_B})
    assert [o.usage.output_tokens for o in got if o.usage] == [50]


def test_the_held_turn_comes_out_at_close() -> None:
    state = started()
    server(state, AUDIO_OUT, {"serverContent": {"interrupted": True}},
           {"serverContent": {"turnComplete": True}})
    assert [(o.status, o.usage) for o in state.close()] == [("incomplete", None)]


def test_cut_after_generation_complete_counts_as_complete_with_its_usage() -> None:
    state = started()
    assert server(state, AUDIO_OUT, {"serverContent": {"generationComplete": True},
                                     "usageMetadata": USAGE_A}) == []
    assert state.running is True
    closed = state.close()
    assert [(o.status, o.usage.output_tokens if o.usage else None) for o in closed] == [
        ("complete", 20)]
    assert state.running is False


def test_cut_mid_turn_is_incomplete() -> None:
    state = started()
    server(state, AUDIO_OUT, {"serverContent": {"outputTranscription": {"text": "Hel"}}})
    assert [(o.status, o.usage) for o in state.close()] == [("incomplete", None)]


@pytest.mark.parametrize("request_frame", [
    {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}],
                       "turnComplete": True}},
    {"client_content": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}],
                        "turn_complete": True}},
    {"toolResponse": {"functionResponses": [{"id": "1", "response": {}}]}},
    {"tool_response": {"functionResponses": [{"id": "1", "response": {}}]}},
    {"realtimeInput": {"activityEnd": {}}},
    {"realtime_input": {"activity_end": {}}},
])
def test_a_request_unanswered_at_close_is_a_row(request_frame: dict[str, Any]) -> None:
    state = started()
    assert state.on_client(json.dumps(request_frame)) == []
    assert state.running is True
    assert [(o.status, o.usage, o.response_model) for o in state.close()] == [
        ("incomplete", None, "gemini-live-2.5-flash-preview")]


def test_a_request_answered_is_not_a_second_row() -> None:
    state = started()
    state.on_client(json.dumps({"clientContent": {"turnComplete": True}}))
    got = server(state, {"serverContent": {"turnComplete": True}, "usageMetadata": USAGE_A})
    assert [o.usage.input_tokens for o in got if o.usage] == [100]
    assert state.close() == []


def test_context_without_turn_complete_asks_for_nothing() -> None:
    state = started()
    state.on_client(json.dumps({"clientContent": {"turns": [], "turnComplete": False}}))
    state.on_client(json.dumps({"realtimeInput": {"audio": {"data": "AAAA",
                                                            "mimeType": "audio/pcm"}}}))
    assert server(state, {"serverContent": {"turnComplete": True}}) == []
    assert state.close() == []


@pytest.mark.parametrize(("reason", "status", "error"), [
    ("RESPONSE_REJECTED", "error", "RESPONSE_REJECTED"),
    ("PROHIBITED_INPUT_CONTENT", "error", "PROHIBITED_INPUT_CONTENT"),
    ("NEED_MORE_INPUT", "complete", None),
    ("TURN_COMPLETE_REASON_UNSPECIFIED", "complete", None),
    ("not a reason: it could echo input", "complete", None),
])
def test_turn_complete_reason(reason: str, status: str, error: str | None) -> None:
    state = started()
    got = server(state, AUDIO_OUT, {"serverContent": {"turnComplete": True,
                                                      "turnCompleteReason": reason},
                                    "usageMetadata": USAGE_A})
    assert [(o.status, o.error) for o in got] == [(status, error)]


def test_an_error_message_ends_nothing_but_marks_the_turn() -> None:
    state = started()
    got = server(state, AUDIO_OUT, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                              "message": "quota for the user's prompt"}})
    assert got == []
    assert [(o.status, o.error) for o in state.close()] == [("error", "RESOURCE_EXHAUSTED")]


def test_vertex_usage_names_and_thoughts() -> None:
    state = LiveState()
    state.on_client(json.dumps({"setup": {
        "model": "projects/p/locations/europe-west4/publishers/google/models/"
                 "gemini-live-2.5-flash"}}))
    got = server(state, {"serverContent": {"modelTurn": {"parts": [{"text": "ok"}]}}},
                 {"serverContent": {"turnComplete": True}, "usageMetadata": {
                     "promptTokenCount": 40, "candidatesTokenCount": 7,
                     "thoughtsTokenCount": 5, "cachedContentTokenCount": 8,
                     "totalTokenCount": 52,
                     "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 7}]}})
    assert [usage_dict(o) for o in got] == [expected_usage({
        "input_tokens": 40, "cache_read_tokens": 8, "cache_write_tokens": 0,
        "cache_write_1h_tokens": None, "output_tokens": 12, "reasoning_tokens": 5})]
    assert got[0].response_model == "gemini-live-2.5-flash"


def test_image_output_is_its_own_unit() -> None:
    state = started()
    got = server(state, AUDIO_OUT, {"serverContent": {"turnComplete": True}, "usageMetadata": {
        "promptTokenCount": 10, "responseTokenCount": 1300,
        "responseTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290},
                                  {"modality": "TEXT", "tokenCount": 10}],
        "promptTokensDetails": [{"modality": "IMAGE", "tokenCount": 4}]}})
    assert [o.usage.units for o in got if o.usage] == [
        {"input_image_tokens": 4, "output_image_tokens": 1290}]


# -- frames the dialect never parses, and frames it cannot

def test_media_frames_are_screened_not_parsed() -> None:
    """An audio frame is known by a literal search: even cut short (not JSON) it opens the
    turn and counts no parse error; realtimeInput media from the client is not read."""
    state = started()
    assert state.on_client('{"realtimeInput": {"audio": {"data": "AAAA') == []
    assert state.on_client(b'{"realtime_input": {"video": {"data": "_9j_') == []
    assert server(state) == []
    assert state.on_server(b'{"serverContent": {"modelTurn": {"parts": [{"inlineData": {"d')\
        == []
    assert state.running is True
    got = server(state, {"serverContent": {"turnComplete": True}, "usageMetadata": USAGE_A})
    assert [(o.status, o.parse_errors) for o in got] == [("complete", 0)]


@pytest.mark.parametrize("as_text", [False, True])
def test_keys_beside_media_are_still_read(as_text: bool) -> None:
    """The screen skips only the base64 `"data"` strings: a turn's end and usage in the
    same message as audio (after it, between two chunks, or after a `data` that is not a
    string) are read."""
    audio = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "QUJD" * 2000}}
    messages = [
        {"serverContent": {"modelTurn": {"parts": [audio]}, "turnComplete": True},
         "usageMetadata": USAGE_A},
        {"serverContent": {"modelTurn": {"parts": [audio, {"text": "data"}, audio]},
                           "turnComplete": True}, "usageMetadata": USAGE_B},
        {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": {"x": "y"}}}]},
                           "turnComplete": True}, "usageMetadata": USAGE_A},
        {"serverContent": {"modelTurn": {"parts": [{"text": 'the "data": "field"'}]},
                           "turnComplete": True}, "usageMetadata": USAGE_B},
    ]
    state = started()
    got: list[Observation] = []
    for m in messages:
        frame = json.dumps(m)
        got += state.on_server(frame if as_text else frame.encode())
    assert [o.usage.output_tokens for o in got if o.usage] == [20, 50, 20, 50]
    assert [o.status for o in got] == ["complete"] * 4


def test_client_media_frames_never_ask_for_a_turn() -> None:
    state = started()
    for frame in ('{"realtimeInput": {"audio": {"data": "AAAA", "mimeType": "audio/pcm"}}}',
                  b'{"realtime_input": {"mediaChunks": [{"data": "_9j_", "mime_type": "x"}]}}',
                  '{"realtime_input": {"audioStreamEnd": true}}'):
        assert state.on_client(frame) == []
    assert state.running is False
    assert state.close() == []


def test_frames_that_are_not_json_are_counted_on_the_next_turn() -> None:
    state = started()
    assert state.on_server(b'{"serverContent": {"turnComplete": tr') == []
    assert state.on_server(b"\xff\xfe not utf-8") == []
    assert state.on_client('{"setup": ') == []
    assert state.on_server(b"[1, 2]") == []  # JSON, but no message
    got = server(state, AUDIO_OUT, {"serverContent": {"turnComplete": True},
                                    "usageMetadata": USAGE_A})
    assert [o.parse_errors for o in got] == [3]
    got = server(state, AUDIO_OUT, {"serverContent": {"turnComplete": True},
                                    "usageMetadata": USAGE_A})
    assert [o.parse_errors for o in got] == [0]


def test_session_prefers_the_session_id_and_never_keeps_a_handle() -> None:
    state = LiveState()
    server(state, {"sessionResumptionUpdate": {"newHandle": "secret-handle", "resumable": True}})
    fingerprint = state.session
    assert fingerprint is not None and fingerprint.startswith("gl-")
    assert "secret-handle" not in fingerprint
    server(state, {"sessionResumptionUpdate": {"newHandle": "another", "resumable": True}})
    assert state.session == fingerprint  # one socket, one session
    state = LiveState()
    server(state, {"setupComplete": {"sessionId": "s-123"}},
           {"sessionResumptionUpdate": {"newHandle": "h", "resumable": True}})
    assert state.session == "s-123"
    state = LiveState()
    server(state, {"sessionResumptionUpdate": {"newHandle": "", "resumable": False}})
    assert state.session is None


# -- paths and the provider homes

@pytest.mark.parametrize("path", [
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
    "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent",
    "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent",
    "/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
])
def test_live_paths(path: str) -> None:
    assert live.is_live_path(path)
    assert live.socket_dialect(path) is LiveState
    for provider in ("gemini", "vertex"):
        factory = PROVIDERS[provider].socket_dialect(path)  # type: ignore[attr-defined]
        assert factory is LiveState
        assert isinstance(factory(), LiveState)


@pytest.mark.parametrize("path", [
    "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent/extra",
    "/ws/google.ai.generativelanguage.v1beta.GenerativeService.StreamGenerateContent",
    "/v1/realtime",
    "/xws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent",
])
def test_other_paths_are_not_live(path: str) -> None:
    assert live.socket_dialect(path) is None
    assert PROVIDERS["gemini"].socket_dialect(path) is None  # type: ignore[attr-defined]


def test_operation_is_realtime() -> None:
    assert LiveState.operation == "realtime"


# -- the real google-genai live client against a fake Live server

@dataclass
class LiveServer:
    """A fake Live endpoint: after the n-th client frame it sends the server frames that
    follow that client frame in the script, then closes the socket when the script ends.
    Every frame both ways is logged in the order this side saw it."""

    script: list[tuple[str, str]]
    seen: list[tuple[str, str | bytes]] = field(default_factory=list)
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def runs(self) -> dict[int, list[str]]:
        """Server frames by the number of client frames that come before them."""
        out: dict[int, list[str]] = {}
        n = 0
        for direction, frame in self.script:
            if direction == "client":
                n += 1
            else:
                out.setdefault(n, []).append(frame)
        return out

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        self.path, self.headers = request.path, dict(request.headers)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        runs = self.runs()
        last = max(runs)
        n = 0
        async for msg in ws:
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY)
            self.seen.append(("client", msg.data))
            n += 1
            for frame in runs.get(n, []):
                data = frame.encode()
                self.seen.append(("server", data))
                await ws.send_bytes(data)
            if n == last:
                break
        await ws.close()
        self.closed.set()
        return ws


@pytest.fixture
async def live_server(tls: tuple[ssl.SSLContext, ssl.SSLContext]
                      ) -> AsyncIterator[Callable[[str], Any]]:
    servers: list[TestServer] = []

    async def start(name: str) -> tuple[LiveServer, str]:
        fake = LiveServer(frames(name))
        app = web.Application()
        app.router.add_get("/{tail:.*}", fake.handle)
        srv = TestServer(app, host="127.0.0.1")
        await srv.start_server(ssl=tls[0])
        servers.append(srv)
        return fake, f"https://127.0.0.1:{srv.port}"

    yield start
    for srv in servers:
        await srv.close()


def pcm(frame: str) -> bytes:
    """The audio of a recorded `realtimeInput` frame, to send again through the SDK."""
    return base64.b64decode(json.loads(frame)["realtimeInput"]["audio"]["data"])


async def read_turn(session: Any) -> list[Any]:
    """One turn's messages, through the resumption update that follows its end."""
    got: list[Any] = []
    while True:
        async for msg in session.receive():
            got.append(msg)
            if msg.session_resumption_update is not None:
                return got


async def speak_two_turns(client: Any, config: Any, audio: list[bytes], fake: LiveServer
                          ) -> tuple[list[Any], list[Any]]:
    """The recorded AI Studio audio session through the real SDK: three chunks and the end
    of the user's audio, a turn, the rest, a turn; then the server closes the socket."""
    from google.genai import types

    turns: list[list[Any]] = []
    async with asyncio.timeout(30):
        async with client.aio.live.connect(
                model="gemini-2.5-flash-native-audio-preview-09-2025", config=config) as session:
            for part in (audio[:3], audio[3:]):
                for chunk in part:
                    await session.send_realtime_input(
                        audio=types.Blob(data=chunk, mime_type="audio/pcm;rate=16000"))
                await session.send_realtime_input(audio_stream_end=True)
                turns.append(await read_turn(session))
        await fake.closed.wait()
    return turns[0], turns[1]


async def test_google_genai_live_client_ai_studio(live_server: Callable[[str], Any],
                                                  tls: tuple[ssl.SSLContext, ssl.SSLContext]
                                                  ) -> None:
    from google import genai
    from google.genai import types

    fake, url = await live_server("ai_studio_audio")
    script = frames("ai_studio_audio")
    audio = [pcm(f) for d, f in script if d == "client" and '"audio"' in f]
    client = genai.Client(api_key="AIza-test-key", http_options=types.HttpOptions(
        base_url=url, async_client_args={"ssl": tls[1]}))
    config = types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(voice_config=types.VoiceConfig(
            prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name="Kore"))),
        system_instruction="You are a helpful assistant.",
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig())
    first, second = await speak_two_turns(client, config, audio, fake)

    # The SDK read the recorded shapes: per-turn usage by modality, AI Studio's names.
    usage = [m.usage_metadata for m in first + second if m.usage_metadata is not None]
    assert [(u.prompt_token_count, u.response_token_count) for u in usage] == [
        (373, 150), (596, 212)]
    assert [(d.modality, d.token_count) for d in usage[0].prompt_tokens_details] == [
        (types.MediaModality.TEXT, 305), (types.MediaModality.AUDIO, 68)]
    assert sum(1 for m in first if m.server_content and m.server_content.turn_complete) == 1

    # What the SDK sent: the key in a header, text frames, snake_case realtime input.
    assert fake.path == \
        "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateContent"
    assert fake.headers["x-goog-api-key"] == "AIza-test-key"
    sent = [f for d, f in fake.seen if d == "client"]
    assert all(isinstance(f, str) for f in sent)
    setup = json.loads(sent[0])["setup"]
    assert setup["model"] == "models/gemini-2.5-flash-native-audio-preview-09-2025"
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    media = [json.loads(f) for f in sent[1:]]
    assert [list(m) for m in media] == [["realtime_input"]] * 7
    assert [base64.urlsafe_b64decode(m["realtime_input"]["audio"]["data"])
            for m in media if "audio" in m["realtime_input"]] == audio
    assert [m["realtime_input"].get("audioStreamEnd") for m in media] == [
        None, None, None, True, None, None, True]

    # The dialect, fed both ways in the order the server saw them, agrees with the payload.
    factory = PROVIDERS["gemini"].socket_dialect(fake.path)  # type: ignore[attr-defined]
    assert factory is LiveState
    state = factory()
    turns = feed(state, fake.seen)
    check("ai_studio_audio", turns, state.close(), state)


async def test_google_genai_live_client_vertex(live_server: Callable[[str], Any],
                                               tls: tuple[ssl.SSLContext, ssl.SSLContext]
                                               ) -> None:
    """Vertex AI (express mode: an API key) through the SDK: Vertex's usage names, the
    model as a publisher path, and the socket cut by the server mid-turn."""
    from google import genai
    from google.genai import errors, types

    fake, url = await live_server("vertex_video_cut")
    script = [f for d, f in frames("vertex_video_cut") if d == "client"]
    client = genai.Client(vertexai=True, api_key="vertex-test-key", http_options=(
        types.HttpOptions(base_url=url, async_client_args={"ssl": tls[1]})))
    config = types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO],
                                     output_audio_transcription=types.AudioTranscriptionConfig())
    got: list[Any] = []
    async with asyncio.timeout(20):
        async with client.aio.live.connect(model="gemini-live-2.5-flash",
                                           config=config) as session:
            for frame in script[1:4]:
                rt = json.loads(frame)["realtimeInput"]
                if "audio" in rt:
                    await session.send_realtime_input(audio=types.Blob(
                        data=base64.b64decode(rt["audio"]["data"]),
                        mime_type=rt["audio"]["mimeType"]))
                else:
                    chunk = rt["mediaChunks"][0]
                    await session.send_realtime_input(media=types.Blob(
                        data=base64.b64decode(chunk["data"]), mime_type=chunk["mimeType"]))
            async for msg in session.receive():
                got.append(msg)
            await session.send_realtime_input(audio=types.Blob(data=pcm(script[4]),
                                                               mime_type="audio/pcm;rate=16000"))
            with pytest.raises(errors.APIError):  # the server cut the socket mid-turn
                async for msg in session.receive():
                    got.append(msg)
        await fake.closed.wait()
    usage = [m.usage_metadata for m in got if m.usage_metadata is not None]
    assert [(u.prompt_token_count, u.response_token_count) for u in usage] == [(1380, 176)]
    assert fake.path == "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
    sent = [json.loads(f) for d, f in fake.seen if d == "client"]
    assert sent[0]["setup"]["model"] == "publishers/google/models/gemini-live-2.5-flash"
    assert [list(m) for m in sent[1:]] == [["realtime_input"]] * 4

    factory = PROVIDERS["vertex"].socket_dialect(fake.path)  # type: ignore[attr-defined]
    assert factory is LiveState
    state = factory()
    turns = feed(state, fake.seen)
    check("vertex_video_cut", turns, state.close(), state)
