"""OpenAI background responses (`responses.create(background=True)`): the usage of one is
known only once it has finished, which the proxy sees on the create's own stream, on a
retrieve (`GET /v1/responses/{id}`), on a resumed stream (`GET /v1/responses/{id}?stream=true`)
or on a cancel (`POST /v1/responses/{id}/cancel`).

The create's row is `pending` (no tokens, no cost: not yet known, never $0). The first
exchange that shows the response finished carries its usage in `Observation.background`;
the recorder writes it once, as a row of its own whose call id is derived from the response
id (`background_call_id`), so seeing it again adds nothing. A retrieve or cancel is itself
billed nothing (zero, reported); retrieving an ordinary response adds nothing either.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from proxy.dialects.base import DialectBase, Observation, RequestInfo, error_text
from proxy.dialects.openai.responses import FINISHED, ResponsesDialect, ResponseStream
from proxy.usage import Usage

__all__ = ["RetrieveDialect"]

_NOTHING = Usage(0, 0, 0, None, 0, 0)  # a retrieval bills nothing


def _retrieved(obs: Observation, background: bool, finished: bool) -> Observation:
    """A retrieve's own row (nothing billed), carrying a background response seen finished."""
    done = replace(obs, text=None, parse_errors=0) if background and finished else None
    return Observation(_NOTHING, None, obs.response_model, obs.upstream_request_id,
                       "complete", None, None, None, obs.parse_errors, background=done)


class _RetrieveStream(ResponseStream):
    """A resumed stream: the Responses events, read as a retrieve."""

    __slots__ = ()

    def result(self) -> Observation:
        return _retrieved(super().result(), self.background, self.finished)


class RetrieveDialect(DialectBase):
    """`GET /v1/responses/{id}` (whole or resumed stream) and `POST .../{id}/cancel`."""

    name: ClassVar[str] = "openai.responses_retrieve"
    free: ClassVar[bool] = True  # the retrieval itself bills nothing
    has_output: ClassVar[bool] = False

    def request_info(self, doc: Any) -> RequestInfo:
        return RequestInfo()

    def from_json(self, doc: Any) -> Observation:
        if not isinstance(doc, dict):
            return Observation(_NOTHING, status="complete", parse_errors=1)
        if doc.get("object") != "response":  # an error body: nothing retrieved
            return Observation(_NOTHING, status="error", error=error_text(doc.get("error")))
        obs = ResponsesDialect().whole(doc)
        return _retrieved(obs, doc.get("background") is True,
                          doc.get("status") in FINISHED)

    def new_stream(self) -> _RetrieveStream:
        return _RetrieveStream()
