"""Every recorded-shape payload, fed whole, byte by byte and in random cuts, gives exactly
the expected normalized observation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dialects.base import Skipped, TextBuffer, read_skipped
from tests.payloads import Payload, all_payloads, expected_usage, run_chunks, usage_dict

PAYLOADS = all_payloads()


def check(p: Payload, chunks: list[bytes]) -> None:
    obs = run_chunks(p, chunks)
    exp = p.expected
    assert usage_dict(obs) == expected_usage(exp["usage"]), p.id
    assert obs.response_model == exp["response_model"]
    lines = [{"line_id": ln.line_id, "usage": usage_dict(ln.observation),
              "response_model": ln.observation.response_model,
              "upstream_request_id": ln.observation.upstream_request_id,
              "status": ln.observation.status} for ln in obs.batch_lines]
    assert lines == [{**ln, "usage": expected_usage(ln["usage"])}
                     for ln in exp.get("lines", [])]
    assert obs.upstream_request_id == exp["upstream_request_id"]
    assert obs.status == exp["status"]
    done = obs.background  # a background response seen finished: its own, linked, row
    assert (None if done is None else {
        "usage": usage_dict(done), "response_model": done.response_model,
        "upstream_request_id": done.upstream_request_id, "status": done.status}) == (
        None if exp.get("background") is None
        else {**exp["background"], "usage": expected_usage(exp["background"]["usage"])})
    assert obs.parse_errors == 0
    if "output_text" in exp:
        assert obs.output_text == exp["output_text"]
    cost = exp.get("provider_cost_usd")
    assert obs.provider_cost_usd == (Decimal(cost) if cost else None)


@pytest.mark.parametrize("p", PAYLOADS, ids=[p.id for p in PAYLOADS])
def test_whole_body(p: Payload) -> None:
    check(p, [p.body])


@pytest.mark.parametrize("p", PAYLOADS, ids=[p.id for p in PAYLOADS])
def test_one_byte_at_a_time(p: Payload) -> None:
    check(p, [p.body[i:i + 1] for i in range(len(p.body))])


@pytest.mark.parametrize("p", PAYLOADS, ids=[p.id for p in PAYLOADS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_cuts_never_change_the_result(p: Payload, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(p.body) - 1, 1)), max_size=12)))
    bounds = [0, *cuts, len(p.body)]
    check(p, [p.body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])


def test_payload_set_covers_every_dialect() -> None:
    from proxy.dialects import DIALECTS

    covered = {p.expected["parser"] for p in PAYLOADS}
    assert covered >= set(DIALECTS) - {"free.count_tokens"}


@pytest.mark.parametrize("p", PAYLOADS, ids=[p.id for p in PAYLOADS])
def test_one_event_per_chunk(p: Payload) -> None:
    """How providers really send: each chunk a whole event (the meter's skip path)."""
    import re

    ends = [m.end() for m in re.finditer(rb"\r\n\r\n|\n\n|(?<=\})\n", p.body)]
    bounds = [0, *ends, len(p.body)]
    check(p, [p.body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a])


def test_skipped_frames_are_read_by_a_pure_function() -> None:
    """Skipped frames hold no reference to the meter: reading them twice, into two
    buffers, gives the same text; SSE and NDJSON alike."""
    from proxy.dialects import DIALECTS

    sse = DIALECTS["openai.chat"].new_stream()
    events = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"' + w + b'"}}]}\n\n'
                      for w in (b"one ", b"two"))
    lines = DIALECTS["ollama.native"].new_stream()
    ndjson = b'{"message":{"role":"assistant","content":"three "}}\n' \
             b'{"message":{"role":"assistant","content":"four"}}\n'
    for state, data, is_sse, want in ((sse, events, True, "one two"),
                                      (lines, ndjson, False, "three four")):
        skipped = Skipped(data, is_sse, state.frame_text)
        for _ in range(2):
            out = TextBuffer()
            read_skipped(skipped, out)
            assert out.text() == want
        buffered = TextBuffer()
        buffered.add_skipped(skipped)
        assert buffered.parts == [skipped] and buffered.text() == want


def test_screen_finds_what_matters_and_passes_harmless_forms() -> None:
    from proxy.dialects.openai.chat import _ChatStream

    screen = _ChatStream.quiet
    assert screen is not None
    quiet = b'data: {"usage":null,"finish_reason":null}\n\ndata: {"usage": null}\n\n'
    assert screen.first(quiet) == -1
    for loud in (b'"usage": {"prompt_tokens": 1}}', b'"usage" :{"a":1}}',
                 b'"finish_reason": "stop"}', b'"error": {}}', b"[DONE]"):
        assert screen.first(quiet + loud) == len(quiet), loud
    # the earliest of several things that matter
    assert screen.first(b'xx{"finish_reason":"stop"}{"usage":{}}') == 3


FRAGMENTS = [b'data: {"usage":null}\n\n', b'data: {"usage": {"a":1}}\n\n',
             b'data: {"finish_reason":null}\n\n', b'data: {"finish_reason": "stop"}\n\n',
             b'data: {"x":"y"}\n\n', b"data: [DONE]\n\n", b'{"error":1}', b'"usage" :{']


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=12),
       steps=st.lists(st.integers(0, 40), max_size=8))
def test_screen_scan_agrees_with_a_fresh_search(parts: list[bytes], steps: list[int]) -> None:
    """Reused hits give the same answer as searching anew from each position."""
    import re

    from proxy.dialects.openai.chat import _ChatStream

    screen = _ChatStream.quiet
    assert screen is not None
    buf = b"".join(parts)
    fresh = re.compile(rb'"x_groq"|"error"|\[DONE\]|"usage"\s*:\s*\{|"finish_reason"\s*:\s*"')
    scan, pos = screen.over(buf), 0
    for step in steps:
        pos = min(pos + step, len(buf))
        m = fresh.search(buf, pos)
        assert scan.next(pos) == (m.start() if m else -1)


def test_screen_scan_searches_an_absent_needle_once() -> None:
    """A batch in which every frame matters stays linear: what is not there is looked for
    once, not again from every frame."""
    from proxy.dialects.openai.chat import _ChatStream

    screen = _ChatStream.quiet
    assert screen is not None
    frame = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    buf = frame * 200
    scan = screen.over(buf)
    calls = [0] * len(scan._searches)

    def counted(i: int, search: object) -> object:
        def run(pos: int) -> int:
            calls[i] += 1
            return search(pos)  # type: ignore[operator]
        return run

    scan._searches = [counted(i, f) for i, f in enumerate(scan._searches)]  # type: ignore[misc]
    for k in range(200):
        assert scan.next(k * len(frame)) == k * len(frame) + buf[:len(frame)].find(b'"usage"')
    # the plain needles: "x_groq", "error", [DONE], "usage":{ (present), "finish_reason":"
    assert calls[0] == calls[1] == calls[2] == calls[4] == 1
    assert calls[3] == 200


PRICE_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google",
                   "bedrock": "aws"}
PRICED = [p for p in PAYLOADS if "cost_usd" in p.expected]


@pytest.mark.parametrize("p", PRICED, ids=[p.id for p in PRICED])
def test_cost_of_every_billed_unit(p: Payload) -> None:
    """The cost of each payload's usage, computed by hand in its expectation from the
    provider's published prices (None: a billed unit has no known price)."""
    from proxy.pricing import PriceBook

    obs = run_chunks(p, [p.body])
    assert obs.usage is not None
    provider = PRICE_PROVIDERS[p.path.parent.name.split("_")[0]]
    price = PriceBook().price(p.expected.get("model") or obs.response_model, provider,
                              obs.usage)
    cost = p.expected["cost_usd"]
    assert price.cost_usd == (None if cost is None else Decimal(cost))
