"""AWS event-stream framing: agrees with botocore's own parser, checks both CRCs, and a
truncated or corrupt stream is an error the meter survives."""

from __future__ import annotations

import pytest

from proxy.dialects import DIALECTS
from proxy.framing.eventstream import EventStreamFramer, encode_frame
from proxy.meter import Meter

HEADERS = {":event-type": "metadata", ":content-type": "application/json",
           ":message-type": "event"}
PAYLOAD = b'{"usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7}}'


def test_frames_agree_with_botocore() -> None:
    from botocore.eventstream import EventStreamBuffer

    frame = encode_frame(HEADERS, PAYLOAD)
    buf = EventStreamBuffer()
    buf.add_data(frame)
    (msg,) = list(buf)
    assert msg.headers == HEADERS and msg.payload == PAYLOAD
    (ours,) = EventStreamFramer().feed(frame)
    assert (ours.name, ours.data, ours.error) == ("metadata", PAYLOAD, False)


def test_exception_frames_are_errors() -> None:
    frame = encode_frame({":exception-type": "throttlingException",
                          ":message-type": "exception"}, b'{"message":"slow down"}')
    (ours,) = EventStreamFramer().feed(frame)
    assert ours.error and ours.name == "throttlingException"


@pytest.mark.parametrize("where", [9, -2])  # the prelude CRC, the message CRC
def test_a_bad_crc_raises(where: int) -> None:
    frame = bytearray(encode_frame(HEADERS, PAYLOAD))
    frame[where] ^= 0x01
    with pytest.raises(ValueError, match="CRC"):
        EventStreamFramer().feed(bytes(frame))


def test_a_stream_cut_inside_a_frame_raises_at_flush() -> None:
    framer = EventStreamFramer()
    assert framer.feed(encode_frame(HEADERS, PAYLOAD)[:-5]) == []
    with pytest.raises(ValueError, match="ends inside"):
        framer.flush()


def test_the_meter_keeps_what_came_before_a_cut() -> None:
    first = encode_frame({**HEADERS, ":event-type": "contentBlockDelta"},
                         b'{"contentBlockIndex":0,"delta":{"text":"Hello"}}')
    meter = Meter(DIALECTS["bedrock.converse"], "application/vnd.amazon.eventstream", None)
    meter.feed(first)
    meter.feed(encode_frame(HEADERS, PAYLOAD)[:20])
    obs = meter.finish()
    assert obs.usage is None and obs.output_text == "Hello"
    assert obs.status == "incomplete" and obs.parse_errors == 1


def test_the_meter_survives_a_corrupt_frame() -> None:
    bad = bytearray(encode_frame(HEADERS, PAYLOAD))
    bad[-1] ^= 0xFF
    meter = Meter(DIALECTS["bedrock.converse"], "application/vnd.amazon.eventstream", None)
    meter.feed(bytes(bad))
    obs = meter.finish()
    assert obs.usage is None and obs.parse_errors >= 1
