"""Estimates against hand counts with the same encoding, and the fallback chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app import make_app
from proxy.dialects import DIALECTS
from proxy.dialects.openai.estimate import chat_tokens, tools_tokens
from proxy.estimate import Estimator
from tests.conftest import Collector, FakeUpstream, Reply, make_config

# The OpenAI cookbook's worked example ("How to count tokens with tiktoken").
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
                                  "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user",
     "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user",
     "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
                "for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean "
                                "for the client deliverable."},
]


def test_cookbook_example_matches_published_prompt_tokens(estimator: Estimator) -> None:
    # The cookbook reports 124 prompt tokens for gpt-4o and 129 for gpt-4 from the API.
    assert estimator.input(DIALECTS["openai.chat"], {"messages": COOKBOOK}, "gpt-4o").tokens \
        == 124
    est = estimator.input(DIALECTS["openai.chat"], {"messages": COOKBOOK}, "gpt-4-0613")
    assert est == type(est)(129, "tiktoken:cl100k_base")


TOOLS = [{"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string",
                     "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "description": "The unit of temperature to return",
                 "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}]
TOOL_MESSAGES = [
    {"role": "system",
     "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("model", "published"), [
    ("gpt-4-0613", 105), ("gpt-3.5-turbo", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)])
def test_cookbook_tools_example_matches_published_counts(estimator: Estimator, model: str,
                                                         published: int) -> None:
    # The cookbook's "counting tokens for chat completions with tool calls" table:
    # gpt-3.5 and gpt-4 use a function init of 10, the gpt-4o family 7.
    doc = {"messages": TOOL_MESSAGES, "tools": TOOLS}
    assert estimator.input(DIALECTS["openai.chat"], doc, model).tokens == published


def test_chat_with_names_by_hand(estimator: Estimator) -> None:
    enc = estimator._enc["o200k_base"]
    n = lambda s: len(enc.encode(s))  # noqa: E731
    msgs = [{"role": "user", "name": "alice", "content": "Hello there"},
            {"role": "assistant", "content": "Hi Alice!"}]
    hand = 3 + (3 + n("user") + n("alice") + 1 + n("Hello there")) \
        + (3 + n("assistant") + n("Hi Alice!"))
    assert chat_tokens(msgs, n) == hand


def test_tools_rules_by_hand(estimator: Estimator) -> None:
    enc = estimator._enc["o200k_base"]
    n = lambda s: len(enc.encode(s))  # noqa: E731
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name."},
            "unit": {"type": "string", "enum": ["c", "f"], "description": ""}}}}}]
    hand = 7 + n("get_weather:Get the weather") + 3 \
        + 3 + n("city:string:City name") \
        + 3 - 3 + (3 + n("c")) + (3 + n("f")) + n("unit:string:") + 12
    assert tools_tokens(tools, n) == hand


def test_anthropic_and_gemini_are_scaled_by_factor(estimator: Estimator) -> None:
    enc = estimator._enc["o200k_base"]
    doc = {"system": "Be brief.", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is the capital of France?"}]}]}
    raw = len(enc.encode("Be brief.")) + 3 + len(enc.encode("What is the capital of France?"))
    est = estimator.input(DIALECTS["anthropic.messages"], doc, "claude-sonnet-4-6")
    assert est.tokens == -(-raw * 12 // 10) and est.estimator == "tiktoken:o200k_base*1.2"
    gdoc = {"contents": [{"role": "user", "parts": [{"text": "Tell me a joke"}]}]}
    g = estimator.input(DIALECTS["gemini.generate"], gdoc, None)
    assert g.tokens == len(enc.encode("Tell me a joke")) and g.estimator == "tiktoken:o200k_base"
    out = estimator.output("Bonjour à tous", None, DIALECTS["anthropic.messages"])
    assert out.tokens == -(-len(enc.encode("Bonjour à tous")) * 12 // 10)


def test_fallback_o200k_then_cl100k_then_chars(tmp_path: Path) -> None:
    only_cl = tmp_path / "cl"
    only_cl.mkdir()
    src = Path(__file__).parents[1] / "proxy" / "data" / "cl100k_base.tiktoken.gz"
    (only_cl / "cl100k_base.tiktoken.gz").write_bytes(src.read_bytes())
    est = Estimator(data_dir=only_cl)
    est.load()
    assert est.count_text("hello world", "gpt-4o").estimator == "tiktoken:cl100k_base"
    none = Estimator(data_dir=tmp_path / "missing")
    none.load()
    assert none.count_text("abcdefghij", "gpt-4o") == type(none.count_text(""))(3, "chars/4")


def test_corrupt_vocabulary_is_refused(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "o200k_base.tiktoken.gz").write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    est = Estimator(data_dir=tmp_path, encodings=("o200k_base",))
    est.load()
    assert est.count_text("hello").estimator == "chars/4"


@pytest.mark.parametrize("parser,doc,texts,overhead", [
    ("openai.responses", {"instructions": "Be terse.", "input": "Hello"},
     ["Be terse.", "Hello"], 3),
    ("openai.embeddings", {"input": ["alpha", "beta"]}, ["alpha", "beta"], 0),
    ("openai.completions", {"prompt": "Once upon"}, ["Once upon"], 0),
    ("ollama.native", {"messages": [{"role": "user", "content": "Hello"}]}, ["Hello"], 0),
])
def test_other_shapes_count_their_text(estimator: Estimator, parser: str, doc: dict,
                                       texts: list[str], overhead: int) -> None:
    enc = estimator._enc["o200k_base"]
    hand = sum(len(enc.encode(t)) for t in texts) + overhead
    assert estimator.input(DIALECTS[parser], doc, None).tokens == hand


def test_a_huge_text_is_counted_in_slices_within_a_token_per_slice(estimator: Estimator) -> None:
    from proxy.estimate import SAMPLE_CHARS

    text = "Le renard brun saute par-dessus le chien paresseux; 12345 67890. " * 50_000
    assert len(text) > 3 * SAMPLE_CHARS
    whole = len(estimator._enc["o200k_base"].encode(text))
    sliced = estimator.count_text(text, "gpt-4o").tokens
    assert whole <= sliced <= whole + len(text) // SAMPLE_CHARS + 1


def test_short_texts_are_counted_once_and_remembered_within_a_bound(
        estimator: Estimator) -> None:
    """A message's role repeats in every message: its count is remembered (at most
    _SHORT_KEPT short texts per encoding), and every count stays the tokenizer's own."""
    from proxy.estimate import _SHORT_KEPT, SHORT_CHARS

    enc = estimator._enc["o200k_base"]
    label, count = estimator._counter("gpt-4o")
    assert label == "tiktoken:o200k_base"
    texts = ["user", "assistant", "tool", "", "x" * SHORT_CHARS, "x" * (SHORT_CHARS + 1),
             *(f"w{i}" for i in range(_SHORT_KEPT + 100))]
    for _ in range(2):  # counted, then read back
        assert [count(t) for t in texts] == [len(enc.encode(t)) for t in texts]
    kept = estimator._counters["o200k_base"]._short
    assert len(kept) == _SHORT_KEPT  # bounded
    assert kept["user"] == 1 and kept["assistant"] == 1
    assert "x" * (SHORT_CHARS + 1) not in kept
    assert estimator._counter("gpt-4o")[1] is count  # one counter per encoding


def test_longer_texts_are_remembered_by_hash_within_a_bound_and_never_kept(
        estimator: Estimator) -> None:
    """An agent resends its conversation every turn: a longer text's count is remembered
    under its hash (the text itself is not kept), at most _SEEN_KEPT of them, then they
    are forgotten and counted again; every count stays the tokenizer's own."""
    from proxy import estimate

    enc = estimator._enc["o200k_base"]
    count = estimator._counter("gpt-4o")[1]
    kept = estimator._counters["o200k_base"]._seen
    kept.clear()
    prompt = "You are a careful assistant. Answer in one short sentence, in English."
    assert count(prompt) == len(enc.encode(prompt))
    assert kept == {hash(prompt): len(enc.encode(prompt))}  # the hash, not the text
    assert count(prompt) == len(enc.encode(prompt))  # read back
    texts = [f"message number {i} of a long conversation" for i in range(estimate._SEEN_KEPT)]
    assert [count(t) for t in texts] == [len(enc.encode(t)) for t in texts]
    assert len(kept) == 1  # full at the last one: forgotten, then that one kept
    assert hash(texts[-1]) in kept


def test_a_deferred_vocabulary_is_asked_for_once_and_used_once_loaded(
        estimator: Estimator) -> None:
    """Loaded with o200k_base only, an older model's estimate asks for cl100k_base once and
    meanwhile counts with o200k_base, saying so; once loaded, cl100k_base counts."""
    est = Estimator()
    asked: list[str] = []
    est.on_demand = asked.append
    est.load(("o200k_base",))
    assert est.loaded and "cl100k_base" not in est._enc
    text = "Capital of Portugal, in one word?"
    assert est.count_text(text, "gpt-4o").estimator == "tiktoken:o200k_base"
    assert asked == []  # a model o200k_base serves asks for nothing
    first = est.count_text(text, "gpt-4-0613")
    assert first == type(first)(len(estimator._enc["o200k_base"].encode(text)),
                                "tiktoken:o200k_base")
    est.count_text(text, "gpt-3.5-turbo")
    assert asked == ["cl100k_base"]  # once, however many estimates wanted it
    est.load_one("cl100k_base")
    assert est.count_text(text, "gpt-4-0613") == type(first)(
        len(estimator._enc["cl100k_base"].encode(text)), "tiktoken:cl100k_base")


def test_a_failed_ask_degrades_to_the_next_encoding(
        caplog: pytest.LogCaptureFixture) -> None:
    est = Estimator()

    def broken(name: str) -> None:
        raise RuntimeError("no thread for you")

    est.on_demand = broken
    est.load(("o200k_base",))
    assert est.count_text("hello there", "gpt-4-turbo").estimator == "tiktoken:o200k_base"
    assert "could not be loaded on demand" in caplog.text


async def test_a_served_proxy_loads_cl100k_only_when_an_older_model_needs_it(
        aiohttp_server: Any, tmp_path: Path, upstream: FakeUpstream) -> None:
    """At start only o200k_base is resident (cl100k_base is 22 MiB); the first gpt-4 call
    without reported usage asks for it, and once it is loaded gpt-4 estimates use it."""
    est = Estimator()
    collector = Collector()
    app = make_app(make_config(tmp_path, upstream.url), estimator=est,
                   extra_sinks=(collector,))
    server = await aiohttp_server(app)
    assert est.loaded and set(est._enc) == {"o200k_base"}
    upstream.on("/v1/chat/completions", Reply(chunks=[json.dumps({
        "id": "c1", "object": "chat.completion", "model": "gpt-4-0613",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Lisbon."},
                     "finish_reason": "stop"}]}).encode()]))
    url = str(server.make_url("/openai/v1/chat/completions"))
    body = {"model": "gpt-4-0613", "messages": [{"role": "user", "content": "Capital?"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as r:
            assert r.status == 200
        [first] = await collector.wait_for(1)
        assert first.usage_source == "estimated"
        assert first.estimator == "tiktoken:o200k_base"  # honest about which one counted
        loading = [t for t in asyncio.all_tasks()
                   if t.get_name() == "tokenbooth-vocabulary-cl100k_base"]
        for task in loading:  # finished already, or awaited here
            await task
        assert "cl100k_base" in est._enc
        async with s.post(url, json=body) as r:
            assert r.status == 200
        second = (await collector.wait_for(2))[1]
    assert second.estimator == "tiktoken:cl100k_base"
    assert second.output_tokens == len(est._enc["cl100k_base"].encode("Lisbon."))
