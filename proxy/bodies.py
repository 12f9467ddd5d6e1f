"""A request's body read once for every consumer: its JSON, or None when it is not JSON.
A body the client compressed is inflated on a side copy, capped (the upstream gets the
client's bytes either way). Pure functions; the handler runs large bodies in a thread."""

from __future__ import annotations

import logging
from typing import Any

from proxy.dialects.base import loads
from proxy.framing.decoders import decode_capped

__all__ = ["parse_json", "parse_json_encoded"]

log = logging.getLogger("tokenbooth.forward")


def parse_json_encoded(body: bytes, encoding: str | None, cap: int) -> Any:
    """The JSON of a body the client compressed, from a side copy inflated up to `cap`
    bytes (a decompression bomb stops there); None when it cannot be read. The upstream
    gets the client's bytes either way."""
    if encoding is None:
        return parse_json(body)
    try:
        return parse_json(decode_capped(body, encoding, cap))
    except ValueError as exc:
        log.info("request body not metered: %s", exc)
        return None


def parse_json(body: bytes) -> Any:
    """The request body's JSON, parsed once per call for every consumer; None if not JSON."""
    if not body:
        return None
    try:
        return loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
