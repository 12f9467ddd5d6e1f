"""UsageStripper: whatever the chunking and JSON spacing, the client's copy of an injected
stream equals the stream the upstream sends without `include_usage`."""

from __future__ import annotations

import json

import pytest

from proxy.dialects.openai.inject import UsageStripper


def stream(with_usage: bool, spaced: bool, crlf: bool) -> bytes:
    seps = (", ", ": ") if spaced else (",", ":")
    end = b"\r\n\r\n" if crlf else b"\n\n"
    out = []
    for i, delta in enumerate(["Lis", "bon", ""]):
        doc: dict[str, object] = {"id": "c", "choices": [
            {"index": 0, "delta": {"content": delta} if delta else {},
             "finish_reason": "stop" if i == 2 else None}]}
        if with_usage:
            doc["usage"] = None
        out.append(b"data: " + json.dumps(doc, separators=seps).encode() + end)
    if with_usage:
        final = {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        out.append(b"data: " + json.dumps(final, separators=seps).encode() + end)
    out.append(b"data: [DONE]" + end)
    return b"".join(out)


def chunkings(body: bytes) -> dict[str, list[bytes]]:
    events = [e + b"\n\n" for e in body.split(b"\n\n") if e]
    if b"\r" in body:
        events = [e + b"\r\n\r\n" for e in body.split(b"\r\n\r\n") if e]
    return {
        "whole": [body],
        "per_event": events,
        "pairs": [b"".join(events[i:i + 2]) for i in range(0, len(events), 2)],
        "bytes": [body[i:i + 1] for i in range(len(body))],
        "thirds": [body[: len(body) // 3], body[len(body) // 3:]],
    }


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_stripped_stream_equals_the_plain_stream(spaced: bool, crlf: bool) -> None:
    plain, injected = stream(False, spaced, crlf), stream(True, spaced, crlf)
    for name, chunks in chunkings(injected).items():
        s = UsageStripper()
        out = b"".join(s.feed(c) for c in chunks) + s.flush()
        assert out == plain, (name, spaced, crlf)


def test_usage_in_the_text_is_left_alone() -> None:
    """A delta that merely talks about usage is not a usage field."""
    chunk = b'data: {"choices":[{"delta":{"content":"the \\"usage\\": null bit"}}]}\n\n'
    assert UsageStripper().feed(chunk) == chunk


def test_inject_splices_the_option_and_keeps_the_clients_bytes() -> None:
    from proxy.dialects.openai.inject import inject

    body = b'{ "model" : "gpt-4o",  "stream": true, "messages": [{"content": "caf\\u00e9"}]}'
    new = inject(body, json.loads(body))
    assert new is not None
    assert new.replace(b'"stream_options":{"include_usage":true},', b"", 1) == body
    assert json.loads(new)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("body", "sent_options"), [
    (b'{"stream":true,"stream_options":null}', {"include_usage": True}),
    (b'{"stream":true,"stream_options":{"x":1}}', {"x": 1, "include_usage": True}),
    (b'{"stream":true,"stream_options":{"include_usage":false}}', None),  # client decided
    (b'{"stream":false}', None),
    (b'{"stream":true,"stream_options":"odd"}', None),
])
def test_inject_merges_or_leaves_existing_options(body: bytes,
                                                  sent_options: dict[str, object] | None) -> None:
    from proxy.dialects.openai.inject import inject

    new = inject(body, json.loads(body))
    if sent_options is None:
        assert new is None
    else:
        assert new is not None and json.loads(new)["stream_options"] == sent_options


def test_inject_leaves_what_is_not_a_stream() -> None:
    from proxy.dialects.openai.inject import inject

    assert inject(b'{"model":"m"}', {"model": "m"}) is None
    assert inject(b'not json "stream"', None) is None
