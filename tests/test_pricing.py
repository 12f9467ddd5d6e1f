"""Prices computed by hand: cache read/write, long context, override, unpriced, free."""

from __future__ import annotations

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
    short = book.price("gemini-2.5-pro", "gemini", Usage(100_000, 0, 0, None, 1000, 0))
    long = book.price("gemini-2.5-pro", "gemini", Usage(250_000, 0, 0, None, 1000, 0))
    assert short.cost_usd == (100_000 * Decimal("1.25") + 1000 * 10) / M
    assert long.cost_usd == (250_000 * Decimal("2.5") + 1000 * 15) / M


def test_config_override_wins() -> None:
    book = PriceBook({"my-finetune": ModelPrice(1.0, 2.0, 0.1, 1.25),
                      "gpt-4o": ModelPrice(1.0, 1.0)})
    p = book.price("my-finetune", "local", Usage(1000, 100, 50, None, 500, None))
    assert p.cost_usd == (850 * 1 + 100 * Decimal("0.1") + 50 * Decimal("1.25") + 500 * 2) / M
    assert p.source == "config"
    assert book.price("gpt-4o", "openai", Usage(1000, 0, 0, None, 0, 0)).cost_usd == \
        Decimal(1000) / M


def test_unpriced_is_none_never_zero() -> None:
    p = PriceBook().price("totally-unknown-model-x", "local", Usage(10, 0, 0, None, 5, None))
    assert p.cost_usd is None and p.source is None


def test_free_and_provider_reported() -> None:
    book = PriceBook()
    assert book.price("llama3.2", "ollama", Usage(10, None, None, None, 5, None),
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
    assert book.price("models/gemini-2.5-flash", "gemini",
                      Usage(1_000_000, 0, 0, None, 0, 0)).cost_usd == Decimal("0.30")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from proxy.pricing import _library_cost  # noqa: E402

MODELS = [("gpt-4o", "openai"), ("claude-sonnet-4-20250514", "anthropic"),
          ("gemini-2.5-pro", "gemini"), ("gemini-2.5-flash", "gemini"),
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
    provider, info = book._lookup(model[0], {"gemini": "google"}.get(model[1], model[1]))
    assert fast == _library_cost(provider, info, u)
