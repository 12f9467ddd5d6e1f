"""Which upstream, which operation and which usage parser serve a request path.

The upstream's dialect names its provider home, whose route table picks the operation
(docs/reference.md lists the routes). An unknown path of a known upstream is still
forwarded and recorded (operation `other`, usage none or estimated).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from proxy.config import Upstream
from proxy.dialects import PROVIDERS, price_provider
from proxy.value import value

__all__ = ["PathEscape", "Route", "normalize_rest", "resolve"]


class PathEscape(ValueError):
    """A path whose `..` segments would leave the upstream's base path."""


def normalize_rest(rest: str, raw_rest: str | None) -> tuple[str, str | None]:
    """(decoded, raw) rest of the path with `.` and `..` segments resolved, each segment
    judged by its decoded form (`%2E%2E` is `..` too); raises PathEscape when `..` would
    climb above the upstream's base path. Paths without dot segments pass untouched."""
    if "." not in rest:
        return rest, raw_rest
    source = raw_rest if raw_rest is not None else rest
    kept: list[str] = []
    for seg in source.split("/"):
        plain = unquote(seg)
        if plain != ".." and ".." in plain.split("/"):
            raise PathEscape(rest)  # `..%2F..`: an upstream that decodes %2F would climb
        if plain == "..":
            if not kept:
                raise PathEscape(rest)
            kept.pop()
        elif plain != ".":
            kept.append(seg)
    raw = "/".join(kept)
    return unquote(raw), (raw if raw_rest is not None else None)


@value
class Route:
    upstream: Upstream
    url: str  # full upstream URL without the query string
    operation: str
    parser: str | None  # key into proxy.dialects.DIALECTS
    path_model: str | None = None  # model named in the URL (Gemini, Azure deployment)
    path_stream: bool = False  # the URL itself asks for a stream (Gemini)
    batch_id: str | None = None  # a batch-results download
    provider: Any = None  # the upstream's provider home
    price_provider: str | None = None  # genai-prices provider id


def resolve(upstream: Upstream, method: str, rest: str, raw_rest: str | None = None) -> Route:
    """Map `rest` (the decoded path after `/{upstream}/`) to a Route; never raises.

    The upstream URL is built from `raw_rest`, the path as the client encoded it, so
    `%2F` or `%3F` in a path segment reach the upstream exactly as sent.
    """
    url = f"{upstream.url}/{rest if raw_rest is None else raw_rest}"
    provider, pp, m = _match(upstream.dialect, upstream.name, method, rest)
    if m is None:
        return Route(upstream, url, "other", None, provider=provider, price_provider=pp)
    return Route(upstream, url, m.operation, m.parser, m.path_model, m.path_stream, m.batch_id,
                 provider, pp)


@lru_cache(maxsize=4096)  # the same few paths, call after call; pure, so safe to reuse
def _match(dialect: str, name: str, method: str, rest: str) -> tuple[Any, str | None, Any]:
    provider = PROVIDERS[dialect]
    return provider, price_provider(dialect, name), provider.match(method, rest.rstrip("/"))
