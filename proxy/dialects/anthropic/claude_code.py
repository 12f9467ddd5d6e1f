"""Claude Code's JSONL transcripts (`~/.claude/projects/<project>/<session>.jsonl`, sub-agents
under `<session>/subagents/`): the API calls they record, for `tokenbooth import claude-code`.

An assistant message's usage is repeated on one transcript line per content block: a call
is counted once (by message id). The Agent tool's result line repeats a sub-agent's usage
on a `user` line: that is not a call. Sans-IO: lines in, calls out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["TranscriptCall", "read_transcript"]


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
                    errors: list[int]) -> Iterator[TranscriptCall]:
    """Each API call of a transcript once (`seen` holds message ids across files); a line
    that is not JSON is counted in `errors` (its line number), never fatal."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            errors.append(n)
            continue
        if not isinstance(obj, dict) or obj.get("type") != "assistant":
            continue
        msg = obj.get("message")
        if not isinstance(msg, dict) or not isinstance(msg.get("usage"), dict):
            continue
        mid = msg.get("id") or obj.get("requestId")
        if not isinstance(mid, str) or mid in seen:
            continue
        seen.add(mid)
        sidechain = obj.get("isSidechain") is True
        agent = obj.get("agentId") if sidechain else None
        yield TranscriptCall(mid, _str(obj.get("requestId")), _str(obj.get("sessionId")),
                             _str(agent) or ("sidechain" if sidechain else None),
                             _str(msg.get("model")), _str(obj.get("timestamp")), msg["usage"])


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None
