"""Content-Encoding decoding for the side copy only; the client gets the original bytes."""

from __future__ import annotations

import zlib
from typing import Protocol

__all__ = ["ContentDecoder", "make_decoder"]


class ContentDecoder(Protocol):
    def decode(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decode(self, chunk: bytes) -> bytes:
        return self._d.decompress(chunk)

    def flush(self) -> bytes:
        return self._d.flush()


class _Deflate:
    """`deflate` is zlib-wrapped by the RFC but raw in practice; detect on first bytes."""

    def __init__(self) -> None:
        self._d: zlib._Decompress | None = None

    def decode(self, chunk: bytes) -> bytes:
        if self._d is None:
            wbits = zlib.MAX_WBITS if chunk[:1] and (chunk[0] & 0x0F) == 8 else -zlib.MAX_WBITS
            self._d = zlib.decompressobj(wbits)
        return self._d.decompress(chunk)

    def flush(self) -> bytes:
        return self._d.flush() if self._d is not None else b""


class _Brotli:
    def __init__(self) -> None:
        import brotli  # type: ignore[import-not-found]  # optional

        self._d = brotli.Decompressor()

    def decode(self, chunk: bytes) -> bytes:
        return bytes(self._d.process(chunk))

    def flush(self) -> bytes:
        return b""


def make_decoder(content_encoding: str | None) -> ContentDecoder | None:
    """None for identity; raises ValueError for an encoding the side copy cannot read."""
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return _Zlib(zlib.MAX_WBITS | 16)
    if enc == "deflate":
        return _Deflate()
    if enc == "br":
        try:
            return _Brotli()
        except ImportError as exc:
            raise ValueError("br encoding needs the optional 'brotli' package") from exc
    raise ValueError(f"unsupported content-encoding {enc!r}")
