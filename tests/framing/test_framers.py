"""The framing stages on their own: SSE, NDJSON, JSON arrays, content decoding.

Each case is fed whole, one byte at a time and cut at arbitrary points; the frames out
must be the same every time.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.framing import JsonArrayFramer, NdjsonFramer, SseEvent, SseFramer, make_decoder


def run(framer: Any, chunks: Sequence[bytes]) -> list[Any]:
    out: list[Any] = []
    for c in chunks:
        out += framer.feed(c)
    return out + framer.flush()


def cuts(data: bytes, points: Sequence[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


SSE_CASES = [
    ("lf", b"data: a\n\ndata: b\n\n", [SseEvent(None, b"a"), SseEvent(None, b"b")]),
    ("crlf", b"event: x\r\ndata: 1\r\n\r\n", [SseEvent("x", b"1")]),
    ("cr", b"data: 1\r\rdata: 2\r\r", [SseEvent(None, b"1"), SseEvent(None, b"2")]),
    ("comments", b": keep-alive\n\n: OPENROUTER PROCESSING\ndata: {}\n\n",
     [SseEvent(None, b"{}")]),
    ("multi-line data", b"data: {\"a\":\ndata: 1}\n\n", [SseEvent(None, b'{"a":\n1}')]),
    ("no space after colon", b"event:ping\ndata:{}\n\n", [SseEvent("ping", b"{}")]),
    ("last event without blank line", b"data: a\n\ndata: [DONE]", [
        SseEvent(None, b"a"), SseEvent(None, b"[DONE]")]),
    ("id and retry ignored", b"id: 7\nretry: 10\ndata: x\n\n", [SseEvent(None, b"x")]),
    ("event name reset per event", b"event: a\ndata: 1\n\ndata: 2\n\n",
     [SseEvent("a", b"1"), SseEvent(None, b"2")]),
    ("raw json line (gemini error)", b'{"error": {"code": 429}}\n\n',
     [SseEvent(None, b'{"error": {"code": 429}}')]),
]


@pytest.mark.parametrize("name,raw,expected", SSE_CASES, ids=[c[0] for c in SSE_CASES])
def test_sse_whole_and_byte_by_byte(name: str, raw: bytes, expected: list[SseEvent]) -> None:
    assert run(SseFramer(), [raw]) == expected
    assert run(SseFramer(), [raw[i:i + 1] for i in range(len(raw))]) == expected


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(SSE_CASES), points=st.lists(st.integers(0, 200), max_size=8))
def test_sse_cut_anywhere(case: tuple[str, bytes, list[SseEvent]], points: list[int]) -> None:
    _, raw, expected = case
    assert run(SseFramer(), cuts(raw, points)) == expected


def test_sse_crlf_split_between_chunks_is_one_line_end() -> None:
    assert run(SseFramer(), [b"data: a\r", b"\n\r", b"\n"]) == [SseEvent(None, b"a")]


def test_sse_event_of_several_mib_passes_whole() -> None:
    big = b'{"text":"' + b"x" * (5 << 20) + b'"}'
    raw = b"data: " + big + b"\n\n"
    chunks = [raw[i:i + 65536] for i in range(0, len(raw), 65536)]
    framer = SseFramer()
    events = run(framer, chunks)
    assert events == [SseEvent(None, big)]
    assert framer.oversized == 0


def test_sse_event_over_the_cap_is_dropped_and_counted() -> None:
    framer = SseFramer(max_event_bytes=1000)
    events = run(framer, [b"data: " + b"x" * 600, b"y" * 600, b"\n\ndata: ok\n\n"])
    assert framer.oversized == 1
    assert events[-1] == SseEvent(None, b"ok")


def test_sse_idle_only_at_event_boundaries() -> None:
    framer = SseFramer()
    framer.feed(b"data: a\n")
    assert not framer.idle
    framer.feed(b"\n")
    assert framer.idle


NDJSON = b'{"a":1}\n\n{"b":2}\r\n{"c":3}'


@settings(max_examples=40, deadline=None)
@given(points=st.lists(st.integers(0, 40), max_size=6))
def test_ndjson_lines_cut_anywhere(points: list[int]) -> None:
    frames = run(NdjsonFramer(), cuts(NDJSON, points))
    assert [json.loads(f) for f in frames] == [{"a": 1}, {"b": 2}, {"c": 3}]


ARRAY = json.dumps([{"text": "a ] } [ {", "esc": "q\\\"x"}, {"n": [1, 2, {"m": 3}]}],
                   indent=1).encode()


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.integers(0, 120), max_size=8))
def test_json_array_elements_cut_anywhere(points: list[int]) -> None:
    frames = run(JsonArrayFramer(), cuts(ARRAY, points))
    assert [json.loads(f) for f in frames] == json.loads(ARRAY)


def test_json_array_element_emitted_when_it_closes() -> None:
    framer = JsonArrayFramer()
    assert framer.feed(b'[{"a": 1}') == [b'{"a": 1}']
    assert framer.feed(b', {"b"') == []
    assert framer.feed(b": 2}]") == [b'{"b": 2}']


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as the RFC says
    "x-gzip": gzip.compress,
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_decoders_give_the_original_bytes_in_pieces(encoding: str) -> None:
    body = b"data: " + json.dumps({"usage": {"prompt_tokens": 3}}).encode() * 50 + b"\n\n"
    packed = ENCODERS[encoding](body)
    dec = make_decoder(encoding)
    assert dec is not None
    out = b"".join(dec.decode(packed[i:i + 7]) for i in range(0, len(packed), 7)) + dec.flush()
    assert out == body


def test_raw_deflate_is_read_too() -> None:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    packed = c.compress(b"hello world") + c.flush()
    dec = make_decoder("deflate")
    assert dec is not None
    assert dec.decode(packed) + dec.flush() == b"hello world"


def test_identity_needs_no_decoder_and_unknown_is_an_error() -> None:
    assert make_decoder(None) is None
    assert make_decoder("identity") is None
    with pytest.raises(ValueError, match="zstd-9000"):
        make_decoder("zstd-9000")
