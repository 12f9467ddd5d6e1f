"""Prices computed by hand from the providers' published price lists: cache read/write,
long context, served tier, batch, modalities, web searches, override, unpriced, free."""

from __future__ import annotations

import time
from decimal import Decimal

from proxy.config import ModelPrice
from proxy.pricing import PriceBook, candidate_names
from proxy.usage import Usage

M = Decimal(1_000_000)


def test_openai_cache_read_discount() -> None:
    p = PriceBook().price("gpt-4o-2024-08-06", "openai", Usage(1000, 200, 0, None, 100, 0))
    # 800 x $2.50 + 200 x $1.25 + 100 x $10.00 per million
    assert p.cost_usd == (800 * Decimal("2.5") + 200 * Decimal("1.25") + 100 * 10) / M
    assert p.source and p.source.startswith("genai-prices ")


def test_anthropic_cache_write_5m_and_1h() -> None:
    u = Usage(8312, 8000, 300, 100, 180, 120)
    p = PriceBook().price("claude-sonnet-4-20250514", "anthropic", u)
    # 12 x $3 + 8000 x $0.30 + 200 x $3.75 (5m) + 100 x $6 (1h) + 180 x $15
    hand = (12 * 3 + 8000 * Decimal("0.3") + 200 * Decimal("3.75") + 100 * 6 + 180 * 15) / M
    assert p.cost_usd == hand


def test_long_context_tier() -> None:
    book = PriceBook()
    short = book.price("gemini-2.5-pro", "google", Usage(100_000, 0, 0, None, 1000, 0))
    long = book.price("gemini-2.5-pro", "google", Usage(250_000, 0, 0, None, 1000, 0))
    assert short.cost_usd == (100_000 * Decimal("1.25") + 1000 * 10) / M
    assert long.cost_usd == (250_000 * Decimal("2.5") + 1000 * 15) / M


def test_config_override_wins() -> None:
    book = PriceBook({"my-finetune": ModelPrice(1.0, 2.0, 0.1, 1.25),
                      "gpt-4o": ModelPrice(1.0, 1.0)})
    p = book.price("my-finetune", None, Usage(1000, 100, 50, None, 500, None))
    assert p.cost_usd == (850 * 1 + 100 * Decimal("0.1") + 50 * Decimal("1.25") + 500 * 2) / M
    assert p.source == "config"
    assert book.price("gpt-4o", "openai", Usage(1000, 0, 0, None, 0, 0)).cost_usd == \
        Decimal(1000) / M


def test_unpriced_is_none_never_zero() -> None:
    p = PriceBook().price("totally-unknown-model-x", None, Usage(10, 0, 0, None, 5, None))
    assert p.cost_usd is None and p.source is None


def test_free_and_provider_reported() -> None:
    book = PriceBook()
    assert book.price("llama3.2", None, Usage(10, None, None, None, 5, None),
                      free=True).cost_usd == 0
    p = book.price("openai/gpt-4o", "openrouter", Usage(220, 0, 128, None, 12, 0),
                   provider_cost=Decimal("0.00031"))
    assert (p.cost_usd, p.source) == (Decimal("0.00031"), "provider")


def test_model_name_normalization() -> None:
    assert candidate_names("models/gemini-2.5-flash") == ["models/gemini-2.5-flash",
                                                          "gemini-2.5-flash"]
    assert "claude-sonnet-4" in candidate_names("claude-sonnet-4@20250514")
    assert "gpt-4o" in candidate_names("gpt-4o-2024-08-06")
    book = PriceBook()
    a = book.price("openai/gpt-4o", "openai", Usage(1000, 0, 0, None, 0, 0))
    b = book.price("gpt-4o", "openai", Usage(1000, 0, 0, None, 0, 0))
    assert a.cost_usd == b.cost_usd == Decimal("0.0025")
    assert book.price("models/gemini-2.5-flash", "google",
                      Usage(1_000_000, 0, 0, None, 0, 0)).cost_usd == Decimal("0.30")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from proxy.pricing import _fast_cost, _library_cost, _plain_cost  # noqa: E402

MODELS = [("gpt-4o", "openai"), ("claude-sonnet-4-20250514", "anthropic"),
          ("gemini-2.5-pro", "google"), ("gemini-2.5-flash", "google"),
          ("deepseek-chat", "deepseek"), ("claude-opus-4-1", "anthropic")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MODELS), st.integers(0, 400_000), st.integers(0, 100_000),
       st.integers(0, 50_000), st.integers(0, 50_000), st.integers(0, 30_000))
def test_fast_path_equals_the_library(model: tuple[str, str], uncached: int, read: int,
                                      write: int, write_1h: int, out: int) -> None:
    book = PriceBook()
    write_1h = min(write_1h, write)
    u = Usage(uncached + read + write, read, write, write_1h, out, None)
    fast = book.price(model[0], model[1], u).cost_usd
    provider, info = book._lookup(model[0], model[1])
    assert fast == _library_cost(provider, info, u)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MODELS), st.integers(0, 400_000), st.integers(0, 100_000),
       st.integers(0, 50_000), st.integers(0, 50_000), st.integers(0, 30_000))
def test_rates_resolved_once_give_the_same_decimal_digit_for_digit(
        model: tuple[str, str], uncached: int, read: int, write: int, write_1h: int,
        out: int) -> None:
    """A ModelPrice without tiers is priced from its five rates resolved once per cached
    ModelPrice: the same Decimal, exponent included, as resolving each class per call (the
    way a tiered model still goes), and the same None where a class has no price."""
    book = PriceBook()
    write_1h = min(write_1h, write)
    u = Usage(uncached + read + write, read, write, write_1h, out, None)
    _, info = book._lookup(model[0], model[1])
    _, mp, rates, _, _ = book._prices(info, None)
    tiered = any(hasattr(getattr(mp, k, None), "tiers") for k in (
        "input_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok",
        "output_mtok"))
    assert (rates is None) == tiered
    if rates is not None:
        plain, general = _plain_cost(rates, u), _fast_cost(mp, u)
        assert str(plain) == str(general)
        assert (plain is None) == (general is None)


def test_plain_rates_are_the_published_ones_and_tiered_prices_have_none() -> None:
    """gpt-4o: $2.50 input, $1.25 cached input, $10 output per million, no cache-write
    price; gemini-2.5-pro's prices are tiered above 200,000 input tokens (resolved per call)."""
    book = PriceBook()
    assert book._prices(book._lookup("gpt-4o", "openai")[1], None)[2] == (
        Decimal("2.5"), Decimal("1.25"), None, None, Decimal("10"))
    assert book._prices(book._lookup("gemini-2.5-pro", "google")[1], None)[2] is None


# Every billed dimension. Each expectation is the provider's published price list, by hand:
# OpenAI gpt-5 $1.25 / $10 per M (flex half: $0.625 / $5; priority $2.50 / $20);
# gpt-4.1 priority $3.50 in, $0.875 cached, $14 out; web search tool calls $10 per 1,000;
# Anthropic Sonnet 4 $3 / $15, web search $10 per 1,000; Sonnet 4.5 batch $1.50 / $7.50,
# batch cache read $0.15; Gemini 2.5 Flash $0.30 text/image/video in, $1.00 audio in,
# $2.50 out; 2.5 Flash Image $30 per M image output tokens; gpt-4o-mini batch $0.075/$0.30.


def test_served_flex_and_priority_tiers_are_what_is_priced() -> None:
    book = PriceBook()
    flex = book.price("gpt-5-2025-08-07", "openai",
                      Usage(1000, 0, 0, None, 500, 200, service_tier="flex"))
    assert flex.cost_usd == (1000 * Decimal("0.625") + 500 * 5) / M
    prio = book.price("gpt-5", "openai", Usage(1000, 0, 0, None, 500, 0, service_tier="priority"))
    assert prio.cost_usd == (1000 * Decimal("2.5") + 500 * 20) / M
    std = book.price("gpt-5", "openai", Usage(1000, 0, 0, None, 500, 0, service_tier="default"))
    assert std.cost_usd == (1000 * Decimal("1.25") + 500 * 10) / M


def test_a_tier_without_a_known_price_is_unpriced_never_the_standard_price() -> None:
    # gpt-4o has no flex price: billing it at the standard rate would be a guess.
    p = PriceBook().price("gpt-4o", "openai", Usage(1000, 0, 0, None, 10, 0, service_tier="flex"))
    assert p.cost_usd is None and p.model == "gpt-4o"


def test_priority_tier_with_cache_and_web_searches() -> None:
    u = Usage(3000, 1000, None, None, 400, 0, {"web_searches": 2}, "priority")
    p = PriceBook().price("gpt-4.1-2025-04-14", "openai", u)
    hand = (2000 * Decimal("3.5") + 1000 * Decimal("0.875") + 400 * 14) / M + 2 * Decimal(10) / 1000
    assert p.cost_usd == hand


def test_anthropic_web_searches_are_billed_and_fetches_are_free() -> None:
    u = Usage(21900, 0, 0, 0, 640, None, {"web_searches": 2, "web_fetches": 3}, "standard")
    p = PriceBook().price("claude-sonnet-4-20250514", "anthropic", u)
    assert p.cost_usd == (21900 * 3 + 640 * 15) / M + 2 * Decimal(10) / 1000


def test_gemini_image_output_and_audio_input() -> None:
    book = PriceBook()
    img = book.price("gemini-2.5-flash-image", "google",
                     Usage(20, 0, 0, None, 1300, None, {"output_image_tokens": 1290}))
    assert img.cost_usd == (20 * Decimal("0.3") + 10 * Decimal("2.5") + 1290 * 30) / M
    aud = book.price("gemini-2.5-flash", "google",
                     Usage(1600, 0, 0, None, 100, 60,
                           {"input_audio_tokens": 500, "input_tool_tokens": 100}))
    # 1,100 text and tool-use prompt tokens at $0.30, 500 audio at $1.00, 100 out at $2.50
    assert aud.cost_usd == (1100 * Decimal("0.3") + 500 * 1 + 100 * Decimal("2.5")) / M


def test_batch_rate() -> None:
    book = PriceBook()
    oa = book.price("gpt-4o-mini-2024-07-18", "openai",
                    Usage(1200, 0, None, None, 300, 0, service_tier="default", batch=True))
    assert oa.cost_usd == (1200 * Decimal("0.075") + 300 * Decimal("0.3")) / M
    an = book.price("claude-sonnet-4-5-20250929", "anthropic",
                    Usage(5000, 4000, 0, None, 100, None, service_tier="batch"))
    assert an.cost_usd == (1000 * Decimal("1.5") + 4000 * Decimal("0.15")
                           + 100 * Decimal("7.5")) / M


def test_unpriced_units_and_batch_give_none() -> None:
    book = PriceBook()
    # No audio price known for this model: audio at the text rate would be ~16x too low.
    audio = book.price("gpt-4o-audio-preview", "openai",
                       Usage(120, 0, None, None, 60, 0,
                             {"input_audio_tokens": 100, "output_audio_tokens": 50}))
    assert audio.cost_usd is None
    # No batch price known for Sonnet 4.0.
    assert book.price("claude-sonnet-4-20250514", "anthropic",
                      Usage(100, 0, 0, None, 10, None, batch=True)).cost_usd is None
    # Config prices are for plain tokens: a web search has no price there.
    over = PriceBook({"my-tune": ModelPrice(1.0, 2.0)})
    assert over.price("my-tune", None, Usage(10, 0, 0, None, 1, 0,
                                             {"web_searches": 1})).cost_usd is None
    assert over.price("my-tune", None, Usage(10, 0, 0, None, 1, 0)).cost_usd == Decimal(12) / M


def test_bedrock_inference_profile_is_priced() -> None:
    p = PriceBook().price("us.anthropic.claude-sonnet-4-20250514-v1:0", "aws",
                          Usage(2512, 2000, 500, None, 5, None))
    assert p.cost_usd == (12 * 3 + 2000 * Decimal("0.3") + 500 * Decimal("3.75") + 5 * 15) / M


def test_anthropic_long_context_tier_on_total_input_including_cache() -> None:
    book = PriceBook()
    # 150k uncached + 60k cache read = 210k total input: above 200k, every class at the
    # long-context rate ($6 in, $0.60 cache read, $22.50 out); 150k alone would not be.
    long = book.price("claude-sonnet-4-5", "anthropic",
                      Usage(210_000, 60_000, 0, None, 1000, None))
    assert long.cost_usd == (150_000 * 6 + 60_000 * Decimal("0.6")
                             + 1000 * Decimal("22.5")) / M
    short = book.price("claude-sonnet-4-5", "anthropic", Usage(150_000, 0, 0, None, 1000, None))
    assert short.cost_usd == (150_000 * 3 + 1000 * 15) / M


def test_anthropic_fast_mode_is_priced_at_its_premium_or_not_at_all() -> None:
    from proxy.dialects.anthropic.usage import from_anthropic

    book = PriceBook()
    fast = from_anthropic({"input_tokens": 1000, "output_tokens": 100, "speed": "fast"})
    # Opus 4.8 fast mode: $10 in, $50 out per million (standard $5 / $25)
    assert book.price("claude-opus-4-8", "anthropic", fast).cost_usd == \
        (1000 * 10 + 100 * 50) / M
    # a model with no fast-mode price: unpriced, never the standard (smaller) number
    assert book.price("claude-opus-4-1", "anthropic", fast).cost_usd is None
    standard = from_anthropic({"input_tokens": 1000, "output_tokens": 100, "speed": "standard"})
    assert book.price("claude-opus-4-8", "anthropic", standard).cost_usd == \
        (1000 * 5 + 100 * 25) / M


def test_audio_units_at_their_published_prices() -> None:
    """whisper-1 $0.006 a minute ($0.36 an hour), tts-1 $15 and tts-1-hd $30 per million
    characters, gpt-4o-transcribe audio input $6 per million tokens."""
    book = PriceBook()
    secs = Usage(0, 0, 0, None, 0, None, {"audio_seconds": 90, "input_audio_seconds": 90})
    assert book.price("whisper-1", "openai", secs).cost_usd == 90 * Decimal("0.36") / 3600
    chars = Usage(0, 0, 0, None, 0, None, {"input_characters": 2000})
    assert book.price("tts-1", "openai", chars).cost_usd == 2000 * 15 / M
    assert book.price("tts-1-hd", "openai", chars).cost_usd == 2000 * 30 / M
    tok = Usage(300, 0, 0, None, 40, None, {"input_audio_tokens": 250})
    # 50 text x $2.50 + 250 audio x $6 + 40 out x $10
    assert book.price("gpt-4o-transcribe", "openai", tok).cost_usd == \
        (50 * Decimal("2.5") + 250 * 6 + 40 * 10) / M


def test_tokens_of_a_model_billed_by_the_second_are_unpriced_not_free() -> None:
    """whisper-1 has no token price: tokens (an estimate where no duration was known)
    must not come out as $0, the way other gateways bill `response_format: text`."""
    p = PriceBook().price("whisper-1", "openai", Usage(50, 0, 0, None, 10, None))
    assert p.cost_usd is None and p.model == "whisper-1"
    p = PriceBook().price("tts-1", "openai", Usage(12, 0, 0, None, 0, None))
    assert p.cost_usd is None


def test_gemini_tts_audio_output_is_priced_at_its_output_rate() -> None:
    """Gemini TTS reports its output as AUDIO candidates; genai-prices lists the TTS
    models' audio rate as plain output: gemini-2.5-flash-preview-tts $0.50 in, $10 out,
    gemini-2.5-pro-preview-tts $1 in, $20 out per million."""
    from proxy.dialects.gemini.usage import from_gemini

    u = from_gemini({"promptTokenCount": 12, "candidatesTokenCount": 640,
                     "totalTokenCount": 652,
                     "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
                     "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 640}]})
    assert u.units == {"output_audio_tokens": 640}
    book = PriceBook()
    flash = book.price("gemini-2.5-flash-preview-tts", "google", u)
    assert flash.cost_usd == (12 * Decimal("0.5") + 640 * 10) / M
    assert book.price("gemini-2.5-pro-preview-tts", "google", u).cost_usd == \
        (12 * 1 + 640 * 20) / M
    # a model with an audio output rate of its own keeps it: gemini-live-2.5-flash $12
    live = book.price("gemini-live-2.5-flash", "google", u)
    assert live.cost_usd == (12 * Decimal("0.5") + 640 * 12) / M
    # and a text model that reports audio output is not priced at its text rate
    assert book.price("gemini-2.5-flash", "google", u).cost_usd is None


# --- pricing.adjustments: negotiated prices (list price vs charged) ---

def _adjusted_book(**overrides: ModelPrice) -> PriceBook:
    from proxy.config import PriceAdjustment

    return PriceBook(overrides, [
        PriceAdjustment(-20, upstream="openai", model="gpt-4o-mini*"),
        PriceAdjustment(10, upstream="anth*", model="claude-3-5-haiku*"),
        PriceAdjustment(0, upstream="openai", model="gpt-4o*"),  # shadowed for mini above
        PriceAdjustment(50, upstream="openai"),
    ])


def test_a_discount_and_a_markup_keep_the_list_price_beside_the_charged_cost() -> None:
    book = _adjusted_book()
    # gpt-4o-mini (OpenAI's price list): $0.15 per million input, $0.60 output
    mini = book.price("gpt-4o-mini-2024-07-18", "openai", Usage(1000, 0, 0, None, 500, 0),
                      upstream="openai")
    listed = (1000 * Decimal("0.15") + 500 * Decimal("0.6")) / M  # $0.00045
    assert mini.list_cost_usd == listed == Decimal("0.00045")
    assert mini.cost_usd == listed * Decimal("0.8") == Decimal("0.00036")  # 20 % off
    # claude-3-5-haiku (Anthropic's price list): $0.80 input, $0.08 cache read, $4 output
    haiku = book.price("claude-3-5-haiku-20241022", "anthropic",
                       Usage(2000, 1000, 0, None, 100, None), upstream="anthropic")
    listed = (1000 * Decimal("0.8") + 1000 * Decimal("0.08") + 100 * 4) / M  # $0.00128
    assert haiku.list_cost_usd == listed == Decimal("0.00128")
    assert haiku.cost_usd == listed * Decimal("1.1") == Decimal("0.001408")  # 10 % markup
    assert haiku.source and haiku.source.startswith("genai-prices ")


def test_the_first_matching_adjustment_wins_and_others_leave_the_list_price() -> None:
    book = _adjusted_book()
    u = Usage(1_000_000, 0, 0, None, 0, 0)
    # gpt-4o: $2.50 per million input; the 0 % entry matches before the 50 % catch-all
    p = book.price("gpt-4o", "openai", u, upstream="openai")
    assert p.cost_usd == p.list_cost_usd == Decimal("2.5")
    # gpt-4.1 (OpenAI): $2.00 per million input; only the catch-all matches: +50 %
    p = book.price("gpt-4.1", "openai", u, upstream="openai")
    assert (p.list_cost_usd, p.cost_usd) == (Decimal("2"), Decimal("2") * Decimal("1.5"))
    # the same model through another upstream: no adjustment matches
    p = book.price("gpt-4o-mini", "openai", u, upstream="azure")
    assert p.cost_usd == p.list_cost_usd == Decimal("0.15")
    # no upstream given (a price asked for outside a call): only upstream-free entries
    assert book.price("gpt-4o-mini", "openai", u).cost_usd == Decimal("0.15")


def test_the_model_glob_matches_the_priced_name_too() -> None:
    from proxy.config import PriceAdjustment

    book = PriceBook({}, [PriceAdjustment(-25, model="claude-sonnet-4-0")])
    # asked as the dated id, priced as genai-prices' `claude-sonnet-4-0`: $3 in, $15 out
    p = book.price("claude-sonnet-4-20250514", "anthropic", Usage(1000, 0, 0, None, 100, None),
                   upstream="anthropic")
    assert p.model == "claude-sonnet-4-0"
    assert p.list_cost_usd == (1000 * 3 + 100 * 15) / M
    assert p.cost_usd == (1000 * 3 + 100 * 15) / M * Decimal("0.75")


def test_unpriced_stays_none_and_free_stays_zero_in_both() -> None:
    book = _adjusted_book()
    p = book.price("gpt-mystery-9", "openai", Usage(10, 0, 0, None, 5, None), upstream="openai")
    assert (p.cost_usd, p.list_cost_usd) == (None, None)
    p = book.price("llama3.2", None, Usage(10, 0, 0, None, 5, None), free=True,
                   upstream="openai")
    assert (p.cost_usd, p.list_cost_usd, p.source) == (0, 0, "free")


def test_config_prices_and_a_provider_charge_are_list_prices_too() -> None:
    book = _adjusted_book(**{"gpt-4o-mini-house": ModelPrice(1.0, 2.0)})
    # the config price: 1000 x $1 + 500 x $2 per million, then 20 % off
    p = book.price("gpt-4o-mini-house", None, Usage(1000, 0, 0, None, 500, None),
                   upstream="openai")
    assert p.list_cost_usd == Decimal(2000) / M
    assert p.cost_usd == Decimal(2000) / M * Decimal("0.8")
    from proxy.config import PriceAdjustment

    routed = PriceBook({}, [PriceAdjustment(-5, upstream="openrouter")])
    p = routed.price("openai/gpt-4o", "openrouter", Usage(220, 0, 128, None, 12, 0),
                     provider_cost=Decimal("0.00031"), upstream="openrouter")
    assert (p.list_cost_usd, p.cost_usd, p.source) == (
        Decimal("0.00031"), Decimal("0.00031") * Decimal("0.95"), "provider")


# --- the usual call priced again: from the rates its first pricing left ---

def test_a_model_priced_again_is_priced_from_its_rates_and_the_rest_goes_the_whole_way(
        ) -> None:
    """gpt-4o (OpenAI's price list): $2.50 input, $1.25 cached input, $10 output per million;
    batch half ($1.25 / $5), priority $4.25 / $17, no flex price, no cache-write price."""
    book = PriceBook()
    first = book.price("gpt-4o-2024-08-06", "openai", Usage(1000, 200, 0, None, 100, 0))
    assert first.cost_usd == (800 * Decimal("2.5") + 200 * Decimal("1.25") + 100 * 10) / M
    assert ("gpt-4o-2024-08-06", "openai") in book._plain  # its rates, kept
    again = book.price("gpt-4o-2024-08-06", "openai", Usage(25, 0, 0, None, 12, 0))
    assert again == first.__class__(Decimal(25 * Decimal("2.5") + 12 * 10) / M, first.source,
                                    "gpt-4o", (25 * Decimal("2.5") + 12 * 10) / M)
    assert str(again.cost_usd) == "0.0001825"  # digit for digit, exponent included
    # what the kept rates do not price goes the whole way, to the same answers as before
    u = Usage(1000, 0, 0, None, 100, 0)
    assert book.price("gpt-4o-2024-08-06", "openai", u, free=True).source == "free"
    assert book.price("gpt-4o-2024-08-06", "openai", u,
                      provider_cost=Decimal("0.01")).cost_usd == Decimal("0.01")
    assert book.price("gpt-4o-2024-08-06", "openai",
                      Usage(1000, 0, 0, None, 100, 0, batch=True)).cost_usd == \
        (1000 * Decimal("1.25") + 100 * 5) / M
    assert book.price("gpt-4o-2024-08-06", "openai",
                      Usage(1000, 0, 0, None, 100, 0, service_tier="priority")).cost_usd == \
        (1000 * Decimal("4.25") + 100 * 17) / M
    assert book.price("gpt-4o-2024-08-06", "openai",
                      Usage(1000, 0, 0, None, 100, 0, service_tier="flex")).cost_usd is None
    assert book.price("gpt-4o-2024-08-06", "openai",
                      Usage(1000, 0, 0, None, 100, 0, {"web_searches": 1})).cost_usd == \
        (1000 * Decimal("2.5") + 100 * 10) / M + Decimal(10) / 1000  # $10 per 1,000 calls
    nothing = book.price("gpt-4o-2024-08-06", "openai", Usage(0, 0, 0, None, 0, 0))
    assert (nothing.cost_usd, nothing.source) == (0, "free")
    assert book.price("gpt-4o-2024-08-06", "openai", Usage()).cost_usd is None
    # no cache-write rate: the library's rule (here: at the input rate) decides, not the rates
    assert book.price("gpt-4o-2024-08-06", "openai",
                      Usage(1000, 0, 200, None, 100, 0)).cost_usd == \
        (1000 * Decimal("2.5") + 100 * 10) / M
    # a model without an input price, or with tiered prices, keeps nothing
    book.price("whisper-1", "openai", Usage(50, 0, 0, None, 10, None))
    book.price("gemini-2.5-pro", "google", Usage(100, 0, 0, None, 10, 0))
    assert ("whisper-1", "openai") not in book._plain
    assert ("gemini-2.5-pro", "google") not in book._plain


def test_a_model_priced_again_keeps_its_negotiated_price() -> None:
    book = _adjusted_book()
    u = Usage(1000, 0, 0, None, 500, 0)
    # gpt-4.1-mini (OpenAI): $0.40 input, $1.60 output per million; the catch-all +50 %
    for _ in range(2):
        p = book.price("gpt-4.1-mini", "openai", u, upstream="openai")
        listed = (1000 * Decimal("0.4") + 500 * Decimal("1.6")) / M
        assert (p.list_cost_usd, p.cost_usd) == (listed, listed * Decimal("1.5"))
    assert ("gpt-4.1-mini", "openai") in book._plain
    # another upstream: the list price
    assert book.price("gpt-4.1-mini", "openai", u, upstream="azure").cost_usd == listed


def test_kept_rates_last_the_hour_of_the_prices_they_came_from() -> None:
    """Prices change by date: the rates a model's pricing kept are used until the hour of
    the ModelPrice they came from is over, never after (here: made to be over)."""
    book = PriceBook()
    u = Usage(1000, 0, 0, None, 100, 0)
    hand = (1000 * Decimal("2.5") + 100 * 10) / M
    assert book.price("gpt-4o", "openai", u).cost_usd == hand
    key = ("gpt-4o", "openai")
    expiry, rates, priced = book._plain[key]
    (mp_key, entry), = book._mp_cache.items()
    assert expiry == entry[0] > time.monotonic()  # the hour of its ModelPrice
    # wrong rates, to tell: used while their hour lasts, not after it
    wrong = (Decimal(1),) * 5
    book._plain[key] = (expiry, wrong, priced)
    assert book.price("gpt-4o", "openai", u).cost_usd == Decimal(1100) / M
    book._plain[key] = (time.monotonic() - 1, wrong, priced)
    assert book.price("gpt-4o", "openai", u).cost_usd == hand
    assert book._plain[key] == (expiry, rates, priced)  # renewed from the ModelPrice's entry
    # the hour over for both: the ModelPrice is read again, and the rates kept anew
    book._mp_cache[mp_key] = (time.monotonic() - 1, *entry[1:])
    book._plain[key] = (time.monotonic() - 1, wrong, priced)
    assert book.price("gpt-4o", "openai", u).cost_usd == hand
    assert book._plain[key][0] == book._mp_cache[mp_key][0] > expiry
    assert book._plain[key][1] == rates


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MODELS + [("gpt-4o-2024-08-06", "openai"), ("whisper-1", "openai")]),
       st.integers(0, 300_000), st.integers(0, 50_000), st.integers(0, 20_000),
       st.integers(0, 20_000), st.integers(0, 20_000),
       st.sampled_from([None, "default", "priority", "flex"]), st.booleans())
def test_kept_rates_give_what_the_whole_way_gives(
        model: tuple[str, str], uncached: int, read: int, write: int, write_1h: int,
        out: int, tier: str | None, batch: bool) -> None:
    """Digit for digit, exponent included, source and model priced too."""
    write_1h = min(write_1h, write)
    u = Usage(uncached + read + write, read, write, write_1h or None, out, 0,
              service_tier=tier, batch=batch)
    book = PriceBook()
    book.price(model[0], model[1], Usage(10, 0, 0, None, 1, 0))  # keeps the rates, if plain
    kept = book.price(model[0], model[1], u)
    cost, source, priced = book._list(model[0], model[1], u, False, None)
    assert (str(kept.cost_usd), kept.source, kept.model) == (str(cost), source, priced)
