"""A streamed JSON array (Gemini streamGenerateContent without alt=sse) -> element texts.

A string-aware bracket counter: it emits each top-level element as soon as its closing
brace arrives, whatever the chunk boundaries.
"""

from __future__ import annotations

import re

__all__ = ["JsonArrayFramer"]

_INTERESTING = re.compile(rb'[][{}"\\]')


class JsonArrayFramer:
    def __init__(self) -> None:
        self._depth = 0  # 1 = inside the outer array
        self._in_string = False
        self._escape = False
        self._current: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0 if self._depth >= 2 else None
        pos = 0
        if self._escape and chunk:
            self._escape = False
            pos = 1
        while True:
            m = _INTERESTING.search(chunk, pos)
            if m is None:
                break
            i = m.start()
            c = chunk[i]
            pos = i + 1
            if self._in_string:
                if c == 0x5C:  # backslash
                    if pos >= len(chunk):
                        self._escape = True
                    pos += 1
                elif c == 0x22:
                    self._in_string = False
                continue
            if c == 0x22:
                self._in_string = True
            elif c in (0x7B, 0x5B):  # { [
                self._depth += 1
                if self._depth == 2:
                    start = i
            elif c in (0x7D, 0x5D):  # } ]
                self._depth -= 1
                if self._depth == 1 and start is not None:
                    self._current.append(chunk[start:pos])
                    out.append(b"".join(self._current))
                    self._current = []
                    start = None
                elif self._depth < 1:
                    self._depth = 0
        if start is not None and self._depth >= 2:
            self._current.append(chunk[start:])
        return out

    def flush(self) -> list[bytes]:
        self._current = []
        return []
