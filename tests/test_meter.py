"""The meter: the side copy of a response, pushed in as bytes. Never raises, whatever the
input; decodes content encodings; frames by content type; a stream's quiet frames are kept
as data for an estimate; a look at the running state does not end it."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dialects import DIALECTS
from proxy.dialects.base import Skipped
from proxy.meter import HOLD_BYTES, Meter
from tests.payloads import ROOT

CHAT_SSE = (ROOT / "openai_chat/stream_include_usage.sse").read_bytes()
CHAT_JSON = (ROOT / "openai_chat/nonstream_cached.json").read_bytes()


def usage_of(meter: Meter) -> tuple[int | None, int | None]:
    obs = meter.finish()
    assert obs.usage is not None
    return obs.usage.input_tokens, obs.usage.output_tokens


@pytest.mark.parametrize("parser", sorted(DIALECTS))
@pytest.mark.parametrize("ctype", ["text/event-stream", "application/x-ndjson",
                                   "application/json"])
@settings(max_examples=30, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64) | st.sampled_from(
    [b"data: {", b"data: [1,2]\n\n", b"data: null\n\n", b'data: {"usage": 5}\n\n',
     b'data: {"type":"message_delta","usage":[]}\n\n', b"\r", b"\n\n", b'{"done": true}\n',
     b'data: {"choices": 7, "usage": {"prompt_tokens": "x"}}\n\n']), max_size=10))
def test_malformed_input_never_raises(parser: str, ctype: str, chunks: list[bytes]) -> None:
    meter = Meter(DIALECTS[parser], ctype, None)
    for c in chunks:
        meter.feed(c)
    obs = meter.finish()
    assert obs.status in ("complete", "incomplete", "error", "unknown")


def test_without_a_dialect_bytes_are_counted_and_nothing_is_read() -> None:
    meter = Meter(None, "application/json", None)
    meter.feed(CHAT_JSON)
    assert meter.broken and meter.bytes_seen == len(CHAT_JSON)
    assert meter.progress() is None
    obs = meter.finish()
    assert obs.usage is None and obs.parse_errors == 0


def test_an_unreadable_encoding_is_one_parse_error_and_the_bytes_still_count() -> None:
    meter = Meter(DIALECTS["openai.chat"], "application/json", "compress")
    meter.feed(CHAT_JSON)
    assert meter.broken and meter.bytes_seen == len(CHAT_JSON)
    obs = meter.finish()
    assert obs.usage is None and obs.parse_errors == 1


@pytest.mark.parametrize("encoding,encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
])
def test_encoded_bodies_are_read_like_plain_ones(encoding: str, encode: object) -> None:
    """The client gets the encoded bytes; the meter reads them decoded, in any cut."""
    body = encode(CHAT_JSON)  # type: ignore[operator]
    meter = Meter(DIALECTS["openai.chat"], "application/json", encoding)
    for i in range(0, len(body), 7):
        meter.feed(body[i:i + 7])
    assert meter.bytes_seen == len(body)
    assert usage_of(meter) == (2310, 7)  # the payload's prompt and completion tokens
    stream = Meter(DIALECTS["openai.chat"], "text/event-stream", encoding)
    encoded = encode(CHAT_SSE)  # type: ignore[operator]
    for b in encoded:
        stream.feed(bytes([b]))
    assert usage_of(stream) == (12, 3)


@pytest.mark.parametrize("ctype,path_stream,streaming", [
    ("application/json", False, False),
    ("text/event-stream; charset=utf-8", False, True),
    ("application/x-ndjson", False, True),
    ("application/vnd.amazon.eventstream", False, True),
    ("application/json", True, True),  # the URL asked for a stream (a JSON array)
    (None, False, False),
])
def test_streaming_is_decided_by_content_type_or_path(ctype: str | None, path_stream: bool,
                                                      streaming: bool) -> None:
    assert Meter(DIALECTS["openai.chat"], ctype, None, path_stream).streaming is streaming


def test_a_batch_results_file_is_read_line_by_line_not_as_a_stream() -> None:
    meter = Meter(DIALECTS["openai.batch"], "application/octet-stream", None)
    assert not meter.streaming
    meter.feed(b'{"id":"b1","custom_id":"r1","response":{"status_code":200,"body":{"model":'
               b'"gpt-4o","usage":{"prompt_tokens":4,"completion_tokens":2}}}}\n')
    obs = meter.finish()
    assert obs.batch_lines and obs.parse_errors == 0


def test_progress_looks_without_ending_the_stream() -> None:
    meter = Meter(DIALECTS["openai.chat"], "text/event-stream", None)
    events = [e + b"\n\n" for e in CHAT_SSE.split(b"\n\n") if e.strip()]
    for e in events[:2]:
        meter.feed(e)
    early = meter.progress()
    assert early is not None and early.usage is None and early.status != "complete"
    for e in events[2:]:
        meter.feed(e)
    assert usage_of(meter) == (12, 3)


def test_held_chunks_are_read_past_the_hold_size() -> None:
    """Chunks screened in batches: a stream longer than HOLD_BYTES is read in several
    releases and loses nothing."""
    delta = (b'data: {"choices":[{"index":0,"delta":{"content":"' + b"y" * 500
             + b'"},"finish_reason":null}],"usage":null}\n\n')
    n = HOLD_BYTES // len(delta) * 3
    meter = Meter(DIALECTS["openai.chat"], "text/event-stream", None)
    feed = meter.feeder()  # what the relay calls: the hold itself, for a screened stream
    assert feed == meter._hold
    for i in range(n):
        feed(delta)
        assert meter.bytes_seen == len(delta) * (i + 1)  # held or read, every byte counts
    last = (b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":' +
            str(n).encode() + b"}}\n\ndata: [DONE]\n\n")
    meter.feed(last)
    obs = meter.finish()
    assert meter.bytes_seen == len(delta) * n + len(last)
    assert obs.usage is not None and (obs.usage.input_tokens, obs.usage.output_tokens) == (9, n)
    assert len(obs.output_text) == 500 * n


def test_skipped_chunks_still_give_the_estimate_text() -> None:
    meter = Meter(DIALECTS["anthropic.messages"], "text/event-stream", None)
    meter.feed(b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
               b'"model":"claude-x","usage":{"input_tokens":5,"output_tokens":1}}}\n\n')
    for word in ("alpha ", "beta ", "gamma"):
        meter.feed(b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                   b'"index":0,"delta":{"type":"text_delta","text":"' + word.encode() + b'"}}\n\n')
    obs = meter.finish()
    # the deltas were kept unread, as data: bytes and how they are framed
    assert obs.text is not None
    skipped = [x for x in obs.text.parts if isinstance(x, Skipped)]
    assert skipped and all(x.sse for x in skipped)
    assert b"".join(x.data for x in skipped).count(b"content_block_delta") == 6
    assert obs.output_text == "alpha beta gamma"
    assert obs.usage is not None and obs.usage.output_tokens is None


def _spaced_chat_stream(n: int, pad: int = 0) -> list[bytes]:
    """An OpenAI-compatible server that writes JSON with Python's default separators."""

    def event(doc: dict[str, object]) -> bytes:
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    base = {"id": "c-1", "object": "chat.completion.chunk", "model": "local-m"}
    chunks = [event({**base, "choices": [{"index": 0, "delta": {"content": f"w{i}" + "x" * pad},
                                          "finish_reason": None}], "usage": None})
              for i in range(n)]
    chunks.append(event({**base, "choices": [{"index": 0, "delta": {},
                                              "finish_reason": "stop"}], "usage": None}))
    chunks.append(event({**base, "choices": [],
                         "usage": {"prompt_tokens": 11, "completion_tokens": n,
                                   "total_tokens": 11 + n}}))
    return [*chunks, b"data: [DONE]\n\n"]


@pytest.mark.parametrize("pad", [0, 5000])  # 5000: held chunks are released mid-stream
def test_spaced_json_usage_is_found_among_held_chunks(pad: int) -> None:
    """`"usage": null` and `"finish_reason": null` in every chunk are harmless forms; the
    spaced `"usage": {` at the end must still be read, whatever the batch boundaries."""
    meter = Meter(DIALECTS["openai.chat"], "text/event-stream", None)
    for chunk in _spaced_chat_stream(40, pad):
        meter.feed(chunk)
    obs = meter.finish()
    assert obs.usage is not None
    assert (obs.usage.input_tokens, obs.usage.output_tokens) == (11, 40)
    assert obs.status == "complete" and obs.response_model == "local-m"
    assert obs.output_text.startswith("w0") and obs.output_text.count("w") >= 40
