"""The OpenAI Realtime socket dialect, messages in, results out: GA and beta event names,
usage by modality, transcription rows, what is running at close, the budget's error event."""

from __future__ import annotations

import json
from typing import Any

from proxy.dialects import PROVIDERS
from proxy.dialects.openai.realtime import RealtimeDialect, from_realtime, from_transcription
from proxy.usage import Usage


def ev(**doc: Any) -> str:
    return json.dumps(doc)


def test_registered_for_openai_and_azure_paths() -> None:
    openai = PROVIDERS["openai"]
    for path in ("v1/realtime", "openai/realtime", "openai/v1/realtime"):
        sd = openai.socket(path)
        assert sd is not None and sd.name == "openai.realtime"
    assert openai.socket("v1/chat/completions") is None


def test_beta_names_and_azure_deployment() -> None:
    state = RealtimeDialect().new_socket({"deployment": "my-rt", "api-version": "x"}, None)
    assert state.on_client(ev(type="session.update", session={
        "input_audio_transcription": {"model": "whisper-1"}})) == []
    assert state.on_server(ev(type="response.created", response={"id": "r1"})) == []
    state.on_server(ev(type="response.audio_transcript.delta", response_id="r1", delta="Hi"))
    assert state.on_server(b"\x00binary") == []
    (done,) = state.on_server(ev(type="response.done", response={
        "id": "r1", "status": "cancelled", "usage": {"input_tokens": 10, "output_tokens": 3}}))
    assert (done.response_model, done.status, done.operation) == ("my-rt", "incomplete",
                                                                  "realtime")
    assert done.usage == Usage(10, 0, 0, None, 3, None, None)
    assert done.output_text == "Hi"
    (tr,) = state.on_server(ev(type="conversation.item.input_audio_transcription.completed",
                               item_id="i1", usage={"type": "duration", "seconds": 2.2}))
    assert (tr.response_model, tr.operation, tr.upstream_request_id) == \
        ("whisper-1", "transcription", "i1")
    assert tr.usage is not None and tr.usage.units == {"input_audio_seconds": 3}  # rounded up


def test_usage_by_modality_gives_cached_parts_the_price_library_needs() -> None:
    u = from_realtime({"input_tokens": 100, "output_tokens": 50, "input_token_details": {
        "audio_tokens": 40, "image_tokens": 10, "cached_tokens": 20,
        "cached_tokens_details": {"text_tokens": 20}},
        "output_token_details": {"audio_tokens": 45}})
    assert u.units == {"input_audio_tokens": 40, "input_image_tokens": 10,
                       "output_audio_tokens": 45, "cache_audio_read_tokens": 0,
                       "cache_image_read_tokens": 0}
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (100, 20, 50)
    plain = from_realtime({"input_tokens": 5, "output_tokens": 1})
    assert plain.units is None
    assert from_transcription({"type": "tokens"}) is None


def test_running_at_close_and_unreadable_messages() -> None:
    state = RealtimeDialect().new_socket({"model": "gpt-realtime"}, None)
    state.on_server(ev(type="session.created", session={"object": "realtime.session",
                                                        "id": "sess_9"}))
    state.on_server(ev(type="response.created", response={"id": "r2"}))
    state.on_server('{"type":"response.done", broken')
    assert state.session_id == "sess_9" and state.parse_errors == 1
    assert list(state.progress()) == ["r2"]
    (cut,) = state.close()
    assert (cut.upstream_request_id, cut.status, cut.usage) == ("r2", "incomplete", None)
    assert state.close() == []


def test_refusal_is_the_realtime_error_event_only_for_response_create() -> None:
    d = RealtimeDialect()
    assert d.refusal(ev(type="input_audio_buffer.append", audio="AAAA"), "no") is None
    assert d.refusal(b"\x01", "no") is None
    got = json.loads(d.refusal(ev(type="response.create", event_id="e7"), "over budget") or "")
    assert got["type"] == "error" and got["event_id"].startswith("event_")
    assert got["error"] == {"type": "invalid_request_error", "code": "budget_exceeded",
                            "message": "over budget", "param": None, "event_id": "e7"}
