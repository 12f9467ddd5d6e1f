"""OpenAI Batch output files (`GET /v1/files/{id}/content`): one line per request,
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy.dialects.base import Dialect, Observation
from proxy.dialects.batch import BatchDialect, failed_line, succeeded_line
from proxy.dialects.openai.chat import ChatDialect, CompletionsDialect, EmbeddingsDialect
from proxy.dialects.openai.responses import ResponsesDialect

__all__ = ["DIALECT"]

_BY_OBJECT: dict[str, Dialect] = {"chat.completion": ChatDialect(), "response": ResponsesDialect(),
              "text_completion": CompletionsDialect(), "list": EmbeddingsDialect()}


def _line(obj: dict[str, Any]) -> tuple[str, Observation] | None:
    custom_id = obj.get("custom_id")
    response = obj.get("response")
    if not isinstance(custom_id, str) or not ("response" in obj or "error" in obj):
        return None  # not a batch result: some other file
    ok = isinstance(response, dict) and isinstance(response.get("status_code"), int) \
        and response["status_code"] < 400
    if obj.get("error") or not ok or not isinstance(response, dict):
        body = response.get("body") if isinstance(response, dict) else None
        err = obj.get("error") or (body.get("error") if isinstance(body, dict) else None)
        return custom_id, failed_line(err or "failed")
    body = response.get("body")
    parser = _BY_OBJECT.get(str(body.get("object"))) if isinstance(body, dict) else None
    if parser is None:
        return custom_id, failed_line("unknown result body")
    obs = parser.from_json(body)
    if obs.upstream_request_id is None and response.get("request_id"):
        obs = replace(obs, upstream_request_id=str(response["request_id"]))
    return custom_id, succeeded_line(obs)


DIALECT = BatchDialect("openai.batch", _line)
