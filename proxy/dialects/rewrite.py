"""A byte-level substitution on the client's copy of a response, whatever the chunk
boundaries: used where a provider hands the client an absolute URL of its own (Anthropic's
batch `results_url`), so that following it stays metered. Bytes are never decoded."""

from __future__ import annotations

__all__ = ["BytesReplacer"]


class BytesReplacer:
    """Replaces every `old` with its `new`; holds back only a suffix that may start one."""

    __slots__ = ("_pairs", "_tail")

    def __init__(self, *pairs: tuple[bytes, bytes]) -> None:
        self._pairs = pairs
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self._tail + chunk if self._tail else chunk
        for old, new in self._pairs:
            buf = buf.replace(old, new)
        cut = len(buf)
        for old, _ in self._pairs:
            for n in range(min(len(old) - 1, len(buf)), 0, -1):
                if old.startswith(buf[-n:]):
                    cut = min(cut, len(buf) - n)
                    break
        self._tail = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail
