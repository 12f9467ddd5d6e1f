"""Which upstream, which operation and which usage parser serve a request path.

The upstream's dialect says how its APIs speak; the path picks the operation
(SPEC section 2). An unknown path of a known upstream is still forwarded and
recorded (operation `other`, usage none or estimated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.config import Upstream

__all__ = ["Route", "resolve"]


@dataclass(frozen=True, slots=True)
class Route:
    upstream: Upstream
    url: str  # full upstream URL without the query string
    operation: str
    parser: str | None  # key into proxy.dialects.DIALECTS
    path_model: str | None = None  # model named in the URL (Gemini, Azure deployment)
    path_stream: bool = False  # the URL itself asks for a stream (Gemini)


# (suffix regex, operation, parser) per dialect family, first match wins.
_OPENAI = (
    (re.compile(r"(?:^|/)chat/completions$"), "chat", "openai.chat"),
    (re.compile(r"(?:^|/)responses/input_tokens$"), "count_tokens", "free.count_tokens"),
    (re.compile(r"(?:^|/)responses$"), "responses", "openai.responses"),
    (re.compile(r"(?:^|/)completions$"), "completions", "openai.completions"),
    (re.compile(r"(?:^|/)embeddings$"), "embeddings", "openai.embeddings"),
    (re.compile(r"(?:^|/)messages/count_tokens$"), "count_tokens", "free.count_tokens"),
    (re.compile(r"(?:^|/)messages$"), "messages", "anthropic.messages"),
)
_ANTHROPIC = (
    (re.compile(r"(?:^|/)messages/count_tokens$"), "count_tokens", "free.count_tokens"),
    (re.compile(r"(?:^|/)messages$"), "messages", "anthropic.messages"),
)
_OLLAMA = (
    (re.compile(r"(?:^|/)api/chat$"), "chat", "ollama.native"),
    (re.compile(r"(?:^|/)api/generate$"), "generate", "ollama.native"),
    (re.compile(r"(?:^|/)api/embed(?:dings)?$"), "embeddings", "ollama.native"),
    *_OPENAI,
)
_GEMINI_METHOD = re.compile(r"(?:^|/)(?:tunedModels|models)/([^/:]+):([A-Za-z]+)$")
_GEMINI_OPS = {
    "generateContent": ("generate_content", "gemini.generate", False),
    "streamGenerateContent": ("generate_content", "gemini.generate", True),
    "countTokens": ("count_tokens", "free.count_tokens", False),
    "embedContent": ("embeddings", None, False),
    "batchEmbedContents": ("embeddings", None, False),
}
_AZURE_DEPLOYMENT = re.compile(r"(?:^|/)deployments/([^/]+)/")
_TABLES = {"openai": _OPENAI, "anthropic": _ANTHROPIC, "ollama": _OLLAMA}


def resolve(upstream: Upstream, method: str, rest: str, raw_rest: str | None = None) -> Route:
    """Map `rest` (the decoded path after `/{upstream}/`) to a Route; never raises.

    The upstream URL is built from `raw_rest`, the path as the client encoded it, so
    `%2F` or `%3F` in a path segment reach the upstream exactly as sent.
    """
    url = f"{upstream.url}/{rest if raw_rest is None else raw_rest}"
    path = rest.rstrip("/")
    if method != "POST":
        return Route(upstream, url, "other", None)
    if upstream.dialect == "gemini":
        m = _GEMINI_METHOD.search(path)
        if m:
            op, parser, stream = _GEMINI_OPS.get(m.group(2), ("other", None, False))
            return Route(upstream, url, op, parser, unquote(m.group(1)), stream)
        table = _OPENAI  # Gemini's OpenAI-compatible endpoint (/v1beta/openai/...)
    else:
        table = _TABLES[upstream.dialect]
    for pattern, op, parser in table:
        if pattern.search(path):
            dep = _AZURE_DEPLOYMENT.search(path)
            return Route(upstream, url, op, parser, unquote(dep.group(1)) if dep else None)
    return Route(upstream, url, "other", None)
