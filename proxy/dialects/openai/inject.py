"""Stream-usage injection for OpenAI-dialect chat/completions streams.

`inject()` adds `stream_options.include_usage` to a streaming request that did not ask for
it, touching nothing else in the body. `UsageStripper` then removes from the client's copy
what that flag added (the extra usage chunk and the `"usage":null` fields), so the client
receives the stream it would have received without it. The meter still reads the upstream
bytes, usage included.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["UsageStripper", "inject"]


_OPTION = b'"stream_options":{"include_usage":true},'


def inject(body: bytes, doc: Any) -> bytes | None:
    """The rewritten body, or None when the request is not a stream lacking usage. `doc`
    is the request as the proxy parsed it once for every consumer.

    Where the request has no `stream_options` the member is spliced in after the opening
    brace: the client's own bytes (key order, spacing, escapes) reach the upstream as sent.
    """
    if not isinstance(doc, dict) or doc.get("stream") is not True:
        return None
    if "stream_options" not in doc:
        brace = body.find(b"{")
        return body[:brace + 1] + _OPTION + body[brace + 1:]
    opts = doc["stream_options"]
    if opts is not None and not isinstance(opts, dict):
        return None
    if isinstance(opts, dict) and opts.get("include_usage") is not None:
        return None  # the client decided; pass untouched
    rewritten = {**doc, "stream_options": {**(opts or {}), "include_usage": True}}
    return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()


_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')


class UsageStripper:
    """Filters whole SSE events of the client's copy; bytes of other events pass unchanged."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        if not self._parts and chunk.endswith(b"\n\n"):
            # Whole events, the usual shape (any `X\n\n` ends an event, whatever line ends
            # came before): with no usage, or only OpenAI's own null marker, no need to split.
            # (No marker: `replace` gives back the chunk itself.)
            out = chunk.replace(b',"usage":null', b"", 1)
            if b'"usage"' not in out:
                return out
        if chunk.find(b"\n") < 0 and chunk.find(b"\r") < 0:
            self._parts.append(chunk)  # no event can end here: hold the partial event
            return b""
        if self._parts:
            self._parts.append(chunk)
            buf = b"".join(self._parts)
            self._parts = []
        else:
            buf = chunk
        events: list[bytes] = []
        pos = 0
        if buf.find(b"\r") >= 0:
            for m in _BOUNDARY.finditer(buf):
                events.append(self._event(buf[pos:m.end()]))
                pos = m.end()
        else:
            find = buf.find
            while (i := find(b"\n\n", pos)) >= 0:
                events.append(self._event(buf[pos:i + 2]))
                pos = i + 2
        if pos < len(buf):
            self._parts.append(buf[pos:])
        return events[0] if len(events) == 1 else b"".join(events)

    def flush(self) -> bytes:
        rest = b"".join(self._parts)
        self._parts = []
        return self._event(rest) if rest else b""

    @staticmethod
    def _event(raw: bytes) -> bytes:
        if raw.find(b'"usage"') < 0:
            return raw
        if raw.find(b',"usage":null') >= 0:  # OpenAI's own spelling: the common case
            return raw.replace(b',"usage":null', b"", 1)
        if _NULL_USAGE.search(raw) and b'"usage":{' not in raw.replace(b" ", b""):
            return _NULL_USAGE.sub(b"", raw, count=1)
        lines = raw.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            try:
                obj: Any = json.loads(line[5:])
            except ValueError:
                return raw
            if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
                return raw
            if obj.get("choices") == []:
                return b""  # the chunk the flag added
            del obj["usage"]
            ending = line[len(line.rstrip(b"\r\n")):]
            lines[i] = b"data: " + json.dumps(obj, ensure_ascii=False,
                                              separators=(",", ":")).encode() + ending
        return b"".join(lines)
