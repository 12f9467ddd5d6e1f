"""AWS binary event-stream frames (Bedrock ConverseStream, InvokeModelWithResponseStream).

Each message: total length (u32), headers length (u32), prelude CRC32, headers, payload,
message CRC32, all big-endian. Both CRCs are checked; a bad CRC or an impossible length
raises ValueError (the meter then stops and keeps what it had: usage `partial`/`none`).
Frames come out whole whatever the chunk boundaries.
"""

from __future__ import annotations

import struct
import zlib

from proxy.value import value

__all__ = ["EventStreamFramer", "EventFrame", "encode_frame"]

_PRELUDE = struct.Struct(">II")
_MAX_MESSAGE = 24 * 1024 * 1024  # the service's own limit is 16 MiB
# header value type -> fixed size (None: u16 length-prefixed)
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


@value
class EventFrame:
    name: str  # `:event-type`, or `:exception-type` / `:error-code` for errors
    data: bytes  # the payload (JSON for Bedrock)
    error: bool = False


def _headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos, end = 0, len(raw)
    while pos < end:
        n = raw[pos]
        name = raw[pos + 1:pos + 1 + n].decode("utf-8", "replace")
        pos += 1 + n
        kind = raw[pos]
        pos += 1
        if kind in (6, 7):
            (length,) = struct.unpack_from(">H", raw, pos)
            value = raw[pos + 2:pos + 2 + length]
            pos += 2 + length
            if kind == 7:
                out[name] = value.decode("utf-8", "replace")
        elif kind in _FIXED:
            pos += _FIXED[kind]
        else:
            raise ValueError(f"event-stream header of unknown type {kind}")
    if pos != end:
        raise ValueError("event-stream headers overrun")
    return out


class EventStreamFramer:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def idle(self) -> bool:
        return not self._buf

    def feed(self, chunk: bytes) -> list[EventFrame]:
        buf = self._buf + chunk if self._buf else chunk
        out: list[EventFrame] = []
        pos = 0
        while len(buf) - pos >= 12:
            total, hlen = _PRELUDE.unpack_from(buf, pos)
            if zlib.crc32(buf[pos:pos + 8]) != struct.unpack_from(">I", buf, pos + 8)[0]:
                raise ValueError("event-stream prelude CRC mismatch")
            if total < 16 + hlen or total > _MAX_MESSAGE:
                raise ValueError(f"event-stream message length {total} is impossible")
            if len(buf) - pos < total:
                break
            msg = buf[pos:pos + total]
            if zlib.crc32(msg[:-4]) != struct.unpack_from(">I", msg, total - 4)[0]:
                raise ValueError("event-stream message CRC mismatch")
            headers = _headers(msg[12:12 + hlen])
            payload = msg[12 + hlen:-4]
            kind = headers.get(":message-type", "event")
            if kind == "event":
                out.append(EventFrame(headers.get(":event-type", ""), payload))
            else:
                out.append(EventFrame(headers.get(":exception-type")
                                      or headers.get(":error-code") or kind, payload, True))
            pos += total
        self._buf = buf[pos:]
        return out

    def flush(self) -> list[EventFrame]:
        if self._buf:
            self._buf = b""
            raise ValueError("event-stream ends inside a message")
        return []


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (for tests and fakes)."""
    raw = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode()))
                   + v.encode() for k, v in headers.items())
    total = 16 + len(raw) + len(payload)
    prelude = _PRELUDE.pack(total, len(raw))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return head + struct.pack(">I", zlib.crc32(head))
