"""Anthropic Message Batch results (`GET /v1/messages/batches/{id}/results`): one line per
request, `{"custom_id", "result": {"type": "succeeded", "message": {...}}}`, or a result of
type `errored`, `canceled` or `expired` (not billed)."""

from __future__ import annotations

from typing import Any

from proxy.dialects.anthropic.messages import MessagesDialect
from proxy.dialects.base import Observation
from proxy.dialects.batch import BatchDialect, failed_line, succeeded_line

__all__ = ["DIALECT"]

_MESSAGES = MessagesDialect()


def _line(obj: dict[str, Any]) -> tuple[str, Observation] | None:
    custom_id, result = obj.get("custom_id"), obj.get("result")
    if not isinstance(custom_id, str) or not isinstance(result, dict):
        return None
    if result.get("type") != "succeeded":
        return custom_id, failed_line(result.get("error") or {"type": result.get("type")})
    return custom_id, succeeded_line(_MESSAGES.from_json(result.get("message")))


DIALECT = BatchDialect("anthropic.batch", _line)
