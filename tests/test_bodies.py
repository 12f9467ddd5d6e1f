"""proxy/bodies.py: a request body's JSON read once; a compressed one inflated on a side
copy, capped; anything else is None, never an error."""

from __future__ import annotations

import gzip
import json

from proxy.bodies import parse_json, parse_json_encoded

DOC = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Olá"}]}
RAW = json.dumps(DOC, ensure_ascii=False).encode()


def test_a_json_body_is_read_and_anything_else_is_none() -> None:
    assert parse_json(RAW) == DOC
    assert parse_json(b"") is None
    assert parse_json(b"--boundary\r\nContent-Disposition: form-data") is None
    assert parse_json(b"\xff\xfe not utf-8") is None


def test_a_compressed_body_is_inflated_on_the_side_up_to_the_cap() -> None:
    packed = gzip.compress(RAW)
    assert parse_json_encoded(packed, "gzip", 1 << 20) == DOC
    assert parse_json_encoded(RAW, None, 1 << 20) == DOC  # not encoded: read as it is
    bomb = gzip.compress(b"[" + b"0," * 500_000 + b"0]")
    assert len(bomb) < 10_000
    assert parse_json_encoded(bomb, "gzip", 64 * 1024) is None  # stops at the cap
    assert parse_json_encoded(b"not gzip", "gzip", 1 << 20) is None
    assert parse_json_encoded(packed, "compress", 1 << 20) is None  # an unknown encoding
