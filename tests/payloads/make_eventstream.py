"""Writes the Bedrock event-stream payloads from their readable event lists (run from the
repository root: `python tests/payloads/make_eventstream.py`). Frames are built with the
proxy's own encoder, whose framing and CRCs are checked against botocore's parser in
tests/framing/test_eventstream.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from proxy.framing.eventstream import encode_frame

HERE = Path(__file__).parent


def event(name: str, payload: object) -> bytes:
    return encode_frame({":event-type": name, ":content-type": "application/json",
                         ":message-type": "event"}, json.dumps(payload).encode())


def chunk(inner: object) -> bytes:
    return event("chunk", {"bytes": base64.b64encode(json.dumps(inner).encode()).decode(),
                           "p": "abcdefgh"})


CONVERSE = [
    event("messageStart", {"role": "assistant", "p": "abc"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}, "p": "ab"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there"}, "p": "a"}),
    event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcd"}),
    event("messageStop", {"stopReason": "end_turn", "p": "abcdef"}),
    event("metadata", {"usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 2517,
                                 "cacheReadInputTokens": 2000, "cacheWriteInputTokens": 500},
                       "metrics": {"latencyMs": 402}, "p": "abc"}),
]
INVOKE = [
    chunk({"type": "message_start", "message": {
        "id": "msg_bdrk_01", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": None,
        "usage": {"input_tokens": 30, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 1000, "output_tokens": 1}}}),
    chunk({"type": "content_block_start", "index": 0,
           "content_block": {"type": "text", "text": ""}}),
    chunk({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": "Hi"}}),
    chunk({"type": "content_block_stop", "index": 0}),
    chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
           "usage": {"output_tokens": 9}}),
    chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
        "inputTokenCount": 30, "outputTokenCount": 9, "invocationLatency": 511,
        "firstByteLatency": 300, "cacheReadInputTokenCount": 1000,
        "cacheWriteInputTokenCount": 0}}),
]
THROTTLED = CONVERSE[:3] + [encode_frame(
    {":exception-type": "throttlingException", ":content-type": "application/json",
     ":message-type": "exception"}, b'{"message":"Too many requests"}')]

if __name__ == "__main__":
    (HERE / "bedrock_converse" / "stream.eventstream").write_bytes(b"".join(CONVERSE))
    (HERE / "bedrock_converse" / "stream_throttled.eventstream").write_bytes(b"".join(THROTTLED))
    (HERE / "bedrock_invoke" / "stream_claude.eventstream").write_bytes(b"".join(INVOKE))
