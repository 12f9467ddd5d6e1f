"""W3C traceparent: a valid header makes the call's span its child; anything else starts a
new trace; the header the upstream gets names the call's own span."""

from __future__ import annotations

import pytest

from proxy.tracecontext import parse_traceparent, parse_tracestate, start_span_ids

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_a_valid_traceparent_makes_a_child_span() -> None:
    ids = start_span_ids(f"00-{TRACE}-{SPAN}-01", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    assert ids.trace_id == int(TRACE, 16) and ids.parent_id == int(SPAN, 16)
    assert ids.span_id not in (0, ids.parent_id) and ids.sampled
    assert ids.tracestate == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert ids.traceparent() == f"00-{TRACE}-{ids.span_id:016x}-01"


def test_an_unsampled_parent_stays_unsampled() -> None:
    ids = start_span_ids(f"00-{TRACE}-{SPAN}-00", None)
    assert not ids.sampled and ids.traceparent().endswith("-00")


@pytest.mark.parametrize("bad", [
    None, "", "garbage", f"00-{TRACE}-{SPAN}", f"ff-{TRACE}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-01-extra"])
def test_anything_else_starts_a_new_sampled_trace(bad: str | None) -> None:
    ids = start_span_ids(bad, "ignored=1" if bad else None)
    assert ids.parent_id is None and ids.trace_id != int(TRACE, 16) and ids.sampled
    assert len(ids.traceparent()) == 55


def test_a_later_version_is_read_by_its_version_00_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-what-comes-next") == \
        (int(TRACE, 16), int(SPAN, 16), 1)


def test_siblings_share_the_parent_with_ids_of_their_own() -> None:
    ids = start_span_ids(f"00-{TRACE}-{SPAN}-01", None)
    sibs = {ids.sibling().span_id for _ in range(100)}
    assert len(sibs) == 100 and ids.span_id not in sibs
    sib = ids.sibling()
    assert (sib.trace_id, sib.parent_id, sib.flags) == (ids.trace_id, ids.parent_id, 1)


def test_tracestate_lines_are_joined_and_kept_only_with_a_valid_parent() -> None:
    ids = start_span_ids(f"00-{TRACE}-{SPAN}-01", ["rojo=00f067aa0ba902b7", " , congo=t61"])
    assert ids.tracestate == "rojo=00f067aa0ba902b7,congo=t61"
    assert start_span_ids("garbage", ["rojo=1"]).tracestate is None  # a new trace: none


@pytest.mark.parametrize("bad", [
    ["Upper=1"], ["rojo"], ["rojo=1,rojo=2"], ["rojo=a=b"], ["rojo=1 "] + ["x=\x7f"],
    [",".join(f"k{i}=v" for i in range(33))], ["k=" + "v" * 257],
    [",".join(f"k{i:02d}=" + "v" * 256 for i in range(32))], [" , "]])  # 32 x 260 chars
def test_an_invalid_or_oversized_tracestate_is_dropped_whole(bad: list[str]) -> None:
    assert parse_tracestate(bad) is None
    assert start_span_ids(f"00-{TRACE}-{SPAN}-01", bad).tracestate is None


def test_a_valid_tracestate_is_what_the_sdk_accepts_without_a_word(
        caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.trace import TraceState

    value = parse_tracestate(["tenant@vendor=x;y", "a-b*c/d=1,  e=2 3"])
    assert value == "tenant@vendor=x;y,a-b*c/d=1,e=2 3"
    with caplog.at_level("WARNING"):
        assert list(TraceState.from_header([value]).items()) == [
            ("tenant@vendor", "x;y"), ("a-b*c/d", "1"), ("e", "2 3")]
    assert caplog.records == []
