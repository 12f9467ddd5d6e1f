"""Gemini Batch API result files (`GET /download/v1beta/files/{id}:download?alt=media`):
one line per request, `{"key", "response": GenerateContentResponse}` or `{"key", "error"}`
(also `status` for a failed one)."""

from __future__ import annotations

from typing import Any

from proxy.dialects.base import Observation
from proxy.dialects.batch import BatchDialect, failed_line, succeeded_line
from proxy.dialects.gemini.generate import GenerateDialect

__all__ = ["DIALECT"]

_GENERATE = GenerateDialect()


def _line(obj: dict[str, Any]) -> tuple[str, Observation] | None:
    key = obj.get("key")
    if not isinstance(key, str):
        return None
    if isinstance(obj.get("response"), dict):
        return key, succeeded_line(_GENERATE.from_json(obj["response"]))
    if "error" in obj or "status" in obj:
        return key, failed_line(obj.get("error") or obj.get("status"))
    return None


DIALECT = BatchDialect("gemini.batch", _line)
