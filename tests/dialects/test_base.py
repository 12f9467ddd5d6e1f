"""proxy.dialects.base: what every dialect shares."""

from __future__ import annotations

import json

import pytest

from proxy.dialects.base import loads

_DOC = {"model": "gpt-4o", "text": "Olá, 東京 \U0001f600", "n": [1, 2.5, None, True]}


@pytest.mark.parametrize("data", [
    json.dumps(_DOC).encode(),  # the usual: UTF-8 bytes
    json.dumps(_DOC, ensure_ascii=False).encode(),
    json.dumps([_DOC]).encode(),
    b"\xef\xbb\xbf" + json.dumps(_DOC).encode(),  # UTF-8 with a BOM
    json.dumps(_DOC, ensure_ascii=False).encode("utf-16-le"),
    json.dumps(_DOC, ensure_ascii=False).encode("utf-16"),  # with its BOM
    json.dumps(_DOC, ensure_ascii=False).encode("utf-32-be"),
    b'{"lone": "\\ud800"}',  # a lone surrogate escape
    b'{"raw": "\xed\xa0\x80"}',  # a surrogate's UTF-8 bytes (surrogatepass, as json's)
    b"7", b'"text"',  # not an object, not an array
    json.dumps(_DOC),  # already text
])
def test_loads_reads_what_json_loads_reads(data: bytes | str) -> None:
    assert loads(data) == json.loads(data)


@pytest.mark.parametrize("data", [b'{"a": 1', b"{\xff}", b"[", b"{\x00}", b""])
def test_loads_refuses_what_json_loads_refuses(data: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        loads(data)
    with pytest.raises(ValueError) as theirs:
        json.loads(data)
    assert type(ours.value) is type(theirs.value)
