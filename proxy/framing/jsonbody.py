"""A capped copy of a non-streaming body, parsed as one JSON document at the end."""

from __future__ import annotations

__all__ = ["JsonBodyBuffer"]


class JsonBodyBuffer:
    def __init__(self, max_bytes: int = 16 << 20) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._max = max_bytes
        self.truncated = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.truncated:
            return []
        self._size += len(chunk)
        if self._size > self._max:
            self.truncated = True
            self._parts = []
            return []
        self._parts.append(chunk)
        return []

    def flush(self) -> list[bytes]:
        if self.truncated or not self._parts:
            return []
        body = b"".join(self._parts).strip()  # DeepSeek pads bodies with blank lines
        self._parts = []
        return [body] if body else []
