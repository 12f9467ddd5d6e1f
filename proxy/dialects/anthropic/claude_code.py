"""Claude Code's JSONL transcripts (`~/.claude/projects/<project>/<session>.jsonl`, sub-agents
under `<session>/subagents/`): the API calls they record, for `tokenbooth import claude-code`.

An assistant message's usage is repeated on one transcript line per content block, growing
as it streams: a call is counted once (by message id), with its final (largest) usage. The
Agent tool's result line repeats a sub-agent's usage on a `user` line: that is not a call.
Sans-IO: lines in, calls out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

__all__ = ["TranscriptCall", "ledger_time", "read_transcript"]


@dataclass(frozen=True, slots=True)
class TranscriptCall:
    message_id: str
    request_id: str | None
    session_id: str | None
    agent_id: str | None  # a sub-agent's calls
    model: str | None
    timestamp: str | None
    usage: dict[str, Any]


def read_transcript(lines: Iterable[bytes | str], seen: set[str],
                    errors: list[tuple[int, str]],
                    latest: str | None = None) -> Iterator[TranscriptCall]:
    """Each API call of a transcript once (`seen` holds message ids across files), with the
    largest usage its lines carry: a streamed message's lines repeat its usage as it grows
    (output_tokens 1, 1, 310), and the last is the bill. A line that is not JSON, or whose
    time does not parse (or is later than `latest`, ledger timestamp text), is counted in
    `errors` (line number, reason), never fatal. The `<synthetic>` messages Claude Code
    writes for API errors are not calls."""
    calls: dict[str, TranscriptCall] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            errors.append((n, "not JSON"))
            continue
        if not isinstance(obj, dict) or obj.get("type") != "assistant":
            continue
        msg = obj.get("message")
        if not isinstance(msg, dict) or not isinstance(msg.get("usage"), dict):
            continue
        if msg.get("model") == "<synthetic>":
            continue
        mid = msg.get("id") or obj.get("requestId")
        if not isinstance(mid, str) or mid in seen:
            continue
        ts = obj.get("timestamp")
        when = None if ts is None else ledger_time(ts)
        if ts is not None and (when is None or latest is not None and when > latest):
            errors.append((n, "time does not parse" if when is None else "time in the future"))
            continue
        sidechain = obj.get("isSidechain") is True
        agent = obj.get("agentId") if sidechain else None
        call = TranscriptCall(mid, _str(obj.get("requestId")), _str(obj.get("sessionId")),
                              _str(agent) or ("sidechain" if sidechain else None),
                              _str(msg.get("model")), when, msg["usage"])
        first = calls.get(mid)
        if first is None:
            calls[mid] = call
        elif _size(call.usage) > _size(first.usage):  # started when the first line says
            calls[mid] = replace(call, timestamp=first.timestamp or call.timestamp)
    seen.update(calls)
    yield from calls.values()


def ledger_time(value: Any) -> str | None:
    """An ISO-8601 time as the ledger's UTC text (`2026-11-29T10:00:00.000Z`), or None when
    it does not parse (a time without a zone is UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        when = when.astimezone(UTC)
    except OverflowError:
        return None
    if when.year < 1000:  # not a time a transcript was written
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _size(usage: dict[str, Any]) -> tuple[int, int]:
    """How far a message's usage had grown: output tokens, then every count together."""
    def n(v: Any) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    return n(usage.get("output_tokens")), sum(n(v) for v in usage.values())


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None
