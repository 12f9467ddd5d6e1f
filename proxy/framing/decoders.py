"""Content-Encoding decoding for the side copy only; the client gets the original bytes."""

from __future__ import annotations

import zlib
from typing import Protocol

__all__ = ["ContentDecoder", "decode_capped", "make_decoder"]


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


def decode_capped(data: bytes, content_encoding: str, cap: int) -> bytes:
    """A whole encoded body, decoded; ValueError when it is invalid, of an unknown encoding,
    or would inflate past `cap` bytes (never more than `cap` is held)."""
    enc = content_encoding.strip().lower()
    if enc in ("", "identity"):
        return data
    if enc in ("gzip", "x-gzip", "deflate"):
        wbits = zlib.MAX_WBITS | 16 if enc != "deflate" else (
            zlib.MAX_WBITS if data[:1] and (data[0] & 0x0F) == 8 else -zlib.MAX_WBITS)
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, cap + 1)
        except zlib.error as exc:
            raise ValueError(f"invalid {enc} body") from exc
        if len(out) > cap or d.unconsumed_tail:
            raise ValueError(f"{enc} body inflates past {cap} bytes")
        if not d.eof:
            raise ValueError(f"truncated {enc} body")
        return out
    raise ValueError(f"unsupported request content-encoding {enc!r}")
