"""OpenAI usage into billed units: the usual chat usage, details that are absent, null or
not a mapping (they hold nothing), audio details, DeepSeek's cache hits, xAI's total."""

from __future__ import annotations

from proxy.dialects.openai.usage import from_openai
from proxy.usage import Usage


def test_the_usual_chat_usage_has_no_units_and_an_unreported_cache_write() -> None:
    u = from_openai({"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
                    tier="default")
    assert u == Usage(120, 0, None, None, 7, 0, None, "default")


def test_details_absent_null_or_not_a_mapping_hold_nothing() -> None:
    for details in ({}, {"prompt_tokens_details": None, "completion_tokens_details": None},
                    {"prompt_tokens_details": [3], "completion_tokens_details": "x"}):
        u = from_openai({"prompt_tokens": 10, "completion_tokens": 2, **details})
        assert u == Usage(10, None, None, None, 2, None, None, None), details


def test_audio_details_and_web_searches_are_units() -> None:
    u = from_openai({"input_tokens": 300, "output_tokens": 50,
                     "input_tokens_details": {"cached_tokens": 100, "audio_tokens": 200,
                                              "cached_tokens_details": {"audio_tokens": 80}},
                     "output_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 40}},
                    responses=True, web_searches=2)
    assert u.units == {"input_audio_tokens": 200, "output_audio_tokens": 40,
                       "cache_audio_read_tokens": 80, "web_searches": 2}
    assert (u.cache_read_tokens, u.reasoning_tokens) == (100, 0)


def test_deepseek_cache_hits_and_an_xai_total_above_the_parts() -> None:
    deepseek = from_openai({"prompt_tokens": 50, "completion_tokens": 5,
                            "prompt_cache_hit_tokens": 32, "service_tier": "standard"})
    assert (deepseek.cache_read_tokens, deepseek.service_tier) == (32, "standard")
    # xAI reasoning billed outside completion_tokens: output = total 90 - prompt 20
    xai = from_openai({"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 90,
                       "completion_tokens_details": {"reasoning_tokens": 60}})
    assert (xai.output_tokens, xai.reasoning_tokens) == (70, 60)
