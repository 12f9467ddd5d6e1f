"""NDJSON framing (Ollama): bytes -> one JSON text per non-blank line."""

from __future__ import annotations

__all__ = ["NdjsonFramer"]


class NdjsonFramer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    @property
    def idle(self) -> bool:
        return not self._parts

    def feed(self, chunk: bytes) -> list[bytes]:
        if chunk.find(b"\n") < 0:
            if chunk:
                self._parts.append(chunk)
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self._parts.append(tail)
        return [ln for ln in (x.strip() for x in lines) if ln]

    def flush(self) -> list[bytes]:
        rest = b"".join(self._parts).strip()
        self._parts = []
        return [rest] if rest else []
