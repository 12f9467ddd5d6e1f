"""Usage: None is "not reported", 0 is zero; totals, known caches, priced units, and the
small readers every provider home uses on raw usage."""

from __future__ import annotations

import logging

import pytest

from proxy.usage import Usage, as_int, as_str, check_total, dig, units


def test_nothing_reported_is_none_not_zero() -> None:
    u = Usage()
    assert u.total_tokens is None and not u.has_input and not u.has_output
    zero = Usage(input_tokens=0, output_tokens=0)
    assert zero.total_tokens == 0 and zero.has_input and zero.has_output


def test_total_is_input_plus_output_whichever_is_reported() -> None:
    assert Usage(input_tokens=120, output_tokens=30).total_tokens == 150
    assert Usage(input_tokens=120).total_tokens == 120
    assert Usage(output_tokens=30).total_tokens == 30


def test_with_cache_known_sets_only_unreported_caches_to_zero() -> None:
    u = Usage(100, None, 7, 2, 10, None, {"web_searches": 1}, "flex", True, "fast")
    known = u.with_cache_known()
    assert (known.cache_read_tokens, known.cache_write_tokens) == (0, 7)
    assert known.reasoning_tokens is None  # not a cache class: still not reported
    assert (known.input_tokens, known.cache_write_1h_tokens, known.output_tokens, known.units,
            known.service_tier, known.batch, known.speed) == (
        100, 2, 10, {"web_searches": 1}, "flex", True, "fast")


def test_priced_units_are_the_non_zero_units_and_the_1h_cache_writes() -> None:
    assert Usage(input_tokens=5).priced_units() == {}
    u = Usage(units={"input_audio_tokens": 40, "web_searches": 0}, cache_write_1h_tokens=300)
    assert u.priced_units() == {"input_audio_tokens": 40, "cache_write_1h_tokens": 300}


def test_readers_take_only_what_they_expect() -> None:
    assert [as_int(v) for v in (3, 3.0, True, "3", None)] == [3, 3, None, None, None]
    assert [as_str(v) for v in ("x", "", 3, None)] == ["x", None, None, None]
    doc = {"usage": {"details": {"cached": 4}}, "list": [1]}
    assert dig(doc, "usage", "details", "cached") == 4
    assert dig(doc, "usage", "missing", "cached") is None
    assert dig(doc, "list", "0") is None  # not a mapping: no error
    assert units(web_searches=2, audio=0, images=None) == {"web_searches": 2}
    assert units(audio=0) is None


def test_a_part_total_disagreement_is_logged_never_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tokenbooth.usage"):
        check_total("openai", 10, 10)
        check_total("openai", 10, None)
        assert caplog.records == []
        check_total("openai", 10, 12)
    assert caplog.messages == ["usage mismatch (openai): parts add up to 10, provider total 12"]
