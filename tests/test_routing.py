"""Which operation and parser a path gets, per dialect, and paths reaching the upstream as sent."""

from __future__ import annotations

import aiohttp
import pytest

from proxy.config import parse
from proxy.routing import resolve
from tests.conftest import FakeUpstream, Proxy, Reply

UPSTREAMS = parse(None, env={}).upstreams

ROUTES = [
    ("openai", "v1/chat/completions", "chat", "openai.chat", None, False),
    ("openai", "v1/completions", "completions", "openai.completions", None, False),
    ("openai", "v1/embeddings", "embeddings", "openai.embeddings", None, False),
    ("openai", "v1/responses", "responses", "openai.responses", None, False),
    ("openai", "v1/responses/input_tokens", "count_tokens", "free.count_tokens", None, False),
    ("openai", "openai/deployments/gpt4o-prod/chat/completions", "chat", "openai.chat",
     "gpt4o-prod", False),
    ("openai", "v1/chat/completions/", "chat", "openai.chat", None, False),
    ("openai", "v1/files", "other", None, None, False),
    ("groq", "v1/chat/completions", "chat", "openai.chat", None, False),
    ("anthropic", "v1/messages", "messages", "anthropic.messages", None, False),
    ("anthropic", "v1/messages/count_tokens", "count_tokens", "free.count_tokens", None, False),
    ("anthropic", "v1/messages/batches", "other", None, None, False),
    ("gemini", "v1beta/models/gemini-2.5-flash:generateContent", "generate_content",
     "gemini.generate", "gemini-2.5-flash", False),
    ("gemini", "v1beta/models/gemini-2.5-pro:streamGenerateContent", "generate_content",
     "gemini.generate", "gemini-2.5-pro", True),
    ("gemini", "v1beta/models/gemini-2.5-pro:countTokens", "count_tokens", "free.count_tokens",
     "gemini-2.5-pro", False),
    ("gemini", "v1beta/tunedModels/my-tune:generateContent", "generate_content",
     "gemini.generate", "my-tune", False),
    ("gemini", "v1beta/openai/chat/completions", "chat", "openai.chat", None, False),
    ("ollama", "api/chat", "chat", "ollama.native", None, False),
    ("ollama", "api/generate", "generate", "ollama.native", None, False),
    ("ollama", "v1/chat/completions", "chat", "openai.chat", None, False),
]


@pytest.mark.parametrize("up,rest,op,parser,model,stream", ROUTES,
                         ids=[f"{r[0]}:{r[1]}" for r in ROUTES])
def test_route_table(up: str, rest: str, op: str, parser: str | None, model: str | None,
                     stream: bool) -> None:
    route = resolve(UPSTREAMS[up], "POST", rest)
    assert (route.operation, route.parser, route.path_model, route.path_stream) == (
        op, parser, model, stream)
    assert route.url == f"{UPSTREAMS[up].url}/{rest}"


@pytest.mark.parametrize(("up", "method", "rest", "op", "parser"), [
    ("openai", "GET", "v1/responses/resp_123", "retrieve", "openai.responses_retrieve"),
    ("openai", "GET", "openai/responses/resp_123", "retrieve", "openai.responses_retrieve"),
    ("openai", "POST", "v1/responses/resp_123/cancel", "cancel", "openai.responses_retrieve"),
    ("openrouter", "GET", "api/v1/responses/resp_9", "retrieve", "openai.responses_retrieve"),
    ("openai", "GET", "v1/responses/resp_123/input_items", "other", None),
    ("openai", "DELETE", "v1/responses/resp_123", "other", None),
    ("openai", "GET", "v1/responses", "other", None),
])
def test_stored_responses_are_read_for_background_usage(up: str, method: str, rest: str,
                                                        op: str, parser: str | None) -> None:
    """Retrieving (or resuming, or cancelling) a response: where a background response's
    usage is first seen; the retrieval itself bills nothing."""
    route = resolve(UPSTREAMS[up], method, rest)
    assert (route.operation, route.parser) == (op, parser)


def test_non_post_is_forwarded_but_not_metered() -> None:
    route = resolve(UPSTREAMS["openai"], "GET", "v1/models")
    assert (route.operation, route.parser) == ("other", None)


def test_url_keeps_the_client_encoding() -> None:
    route = resolve(UPSTREAMS["openai"], "POST", "v1/files/a/b?c", "v1/files/a%2Fb%3Fc")
    assert route.url == "https://api.openai.com/v1/files/a%2Fb%3Fc"


async def test_encoded_path_and_query_reach_the_upstream_unchanged(upstream: FakeUpstream,
                                                                   proxy: Proxy) -> None:
    upstream.default = Reply([b"{}"], headers={"Content-Type": "application/json"})
    async with aiohttp.ClientSession() as s:
        url = f"{proxy.url}/openai/v1/vector_stores/vs%2F1/files%3Fx?limit=5&after=a%26b"
        async with s.get(aiohttp.client.URL(url, encoded=True)) as r:
            assert r.status == 200
    seen = upstream.requests[-1]
    assert seen.raw_path == "/v1/vector_stores/vs%2F1/files%3Fx?limit=5&after=a%26b"
    assert seen.query == "limit=5&after=a%26b"


@pytest.mark.parametrize(("rest", "raw", "expected"), [
    ("v1/chat/completions", "v1/chat/completions", ("v1/chat/completions", "v1/chat/completions")),
    ("v1/x/../chat/completions", "v1/x/../chat/completions",
     ("v1/chat/completions", "v1/chat/completions")),
    ("v1/./responses", "v1/./responses", ("v1/responses", "v1/responses")),
    ("a/../b%2Fc", "a/../b%2Fc", ("b/c", "b%2Fc")),
    ("model/us.anthropic.claude-v1:0/converse", "model/us.anthropic.claude-v1%3A0/converse",
     ("model/us.anthropic.claude-v1:0/converse", "model/us.anthropic.claude-v1%3A0/converse")),
])
def test_dot_segments_are_resolved(rest: str, raw: str, expected: tuple[str, str]) -> None:
    from proxy.routing import normalize_rest

    assert normalize_rest(rest, raw) == expected


@pytest.mark.parametrize("raw", ["../x", "a/../../x", "%2E%2E/x", "v1/..%2F../x"])
def test_leaving_the_base_path_is_refused(raw: str) -> None:
    from urllib.parse import unquote

    from proxy.routing import PathEscape, normalize_rest

    with pytest.raises(PathEscape):
        normalize_rest(unquote(raw), raw)


async def test_an_escaping_path_is_a_400_and_never_forwarded(upstream: FakeUpstream,
                                                             proxy: Proxy) -> None:
    import asyncio

    host, port = proxy.server.host, proxy.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /openrouter/../../x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                 b"Connection: close\r\n\r\n{}")
    await writer.drain()
    head = await asyncio.wait_for(reader.read(200), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400") or head.startswith(b"HTTP/1.1 404"), head
    (rec,) = await proxy.collector.wait_for(1)
    assert rec.outcome == "rejected" and ".." not in rec.path
    assert upstream.requests == []
