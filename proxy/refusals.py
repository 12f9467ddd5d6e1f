"""Our own answers in place of the upstream's: the refusals (unknown upstream, bad path,
keys, body size, rate limits, budgets) and the 502/504 of an upstream that never answered.
Each is an error in the shape the caller's SDK reads (its provider's), with the call's
`X-Meter-Call-Id`; a refusal sets its `End` on the call's facts and takes its status from
`proxy.outcome`'s table; rate-limit and budget refusals add the headers that tell the SDKs
whether and when to retry. A step of a call that refuses it raises `Refused` with its
response. `error_response` is also the admin API's error shape.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from proxy.admission import Denied
from proxy.admission.rate_headers import headers_for
from proxy.outcome import End, ending
from proxy.record import CallFacts
from proxy.routing import Route

__all__ = ["Refused", "budget_refusal", "error_response", "rate_refusal", "refuse",
           "unanswered", "upstream_failed"]


class Refused(Exception):
    """The call ended early with this response (already decided)."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def error_response(status: int, kind: str, message: str, *, call_id: str | None = None,
                   extra: dict[str, Any] | None = None, provider: Any = None) -> web.Response:
    """Our own refusals, in the error shape the caller's SDK reads (its provider's)."""
    if provider is not None:
        body, headers = provider.error(status, kind, message, extra or {})
    else:
        body, headers = {"error": {"type": kind, "message": message, **(extra or {})}}, {}
    resp = web.json_response(body, status=status, headers=headers)
    if call_id:
        resp.headers["X-Meter-Call-Id"] = call_id
    return resp


def refuse(facts: CallFacts, end: End, kind: str, message: str, provider: Any,
           detail: str | None = None, extra: dict[str, Any] | None = None) -> web.Response:
    """Our own refusal: the table gives its status, the provider its error shape."""
    facts.end, facts.end_detail = end, detail
    status = ending(end, detail=detail).status_code
    assert status is not None  # a refusal's status is always its own
    return error_response(status, kind, message, call_id=facts.call_id, extra=extra,
                          provider=provider)


def rate_refusal(facts: CallFacts, route: Route, denied: Denied) -> web.Response:
    """A rate limit's 429: `Retry-After` (whole seconds) and `retry-after-ms` (the SDKs
    prefer it), the limit's figures in the caller's SDK's header style; no
    `x-should-retry` (the SDKs retry a 429 after Retry-After by themselves), unless
    the call can never fit (its reservation alone exceeds the limit's whole window):
    `x-should-retry: false`, which the openai and anthropic SDKs obey."""
    resp = refuse(facts, End.RATE_LIMIT, "rate_limit_exceeded", denied.message,
                  route.provider, detail=denied.name, extra={"rate_limit": denied.name})
    resp.headers.update(headers_for(denied.view, route.provider.name))
    resp.headers["X-Meter-Rate-Limit"] = denied.name
    resp.headers["Retry-After"] = str(denied.retry_after_seconds or 1)
    resp.headers["retry-after-ms"] = str(denied.retry_after_ms or 1)
    if denied.never:
        resp.headers["x-should-retry"] = "false"
    return resp


def budget_refusal(facts: CallFacts, route: Route, denied: Denied) -> web.Response:
    """A budget's refusal: a 429 the SDKs do not retry, or a 503 they may retry when the
    budget cannot be checked while the shared ledger is away."""
    if denied.ledger_down:
        # `on_ledger_down: refuse`: fail closed while the shared ledger is away; a retry
        # may well succeed (the SDKs retry a 503 by themselves)
        resp = refuse(facts, End.BUDGET_UNVERIFIABLE, "budget_unavailable",
                      denied.message, route.provider, detail=denied.name,
                      extra={"budget": denied.name})
        resp.headers["X-Meter-Budget"] = denied.name
        resp.headers["Retry-After"] = str(denied.retry_after_seconds or 1)
        return resp
    resp = refuse(facts, End.BUDGET, "budget_exceeded", denied.message,
                  route.provider, detail=denied.name, extra={"budget": denied.name})
    resp.headers["X-Meter-Budget"] = denied.name
    # A retry cannot succeed before the window ends: tell the SDKs so
    # (the openai and anthropic SDKs obey x-should-retry).
    resp.headers["x-should-retry"] = "false"
    if denied.retry_after_seconds is not None:
        resp.headers["Retry-After"] = str(denied.retry_after_seconds)
    return resp


def unanswered(facts: CallFacts, route: Route, end: End, status: int, kind: str,
               what: str, detail: str | None = None) -> web.Response:
    """The upstream never answered: our 502 or 504, in its provider's error shape."""
    facts.end, facts.end_detail = end, detail
    return error_response(status, kind, f"upstream {route.upstream.name} {what}",
                          call_id=facts.call_id, provider=route.provider)


def upstream_failed(facts: CallFacts, route: Route,
                    exc: aiohttp.ClientError | TimeoutError) -> web.Response:
    """The upstream never answered a call or a socket's upgrade: which `End` that was (from
    the client's exception), and our 502 or 504 for it."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, TimeoutError):
            return unanswered(facts, route, End.CONNECT_TIMEOUT, 504, "upstream_timeout",
                              "did not accept a connection in time")
        return unanswered(facts, route, End.UNREACHABLE, 502, "upstream_unreachable",
                          "is unreachable")
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return unanswered(facts, route, End.NO_ANSWER, 504, "upstream_timeout",
                          "did not answer in time")
    kind = type(exc).__name__
    return unanswered(facts, route, End.CONNECT_FAILED, 502, "upstream_unreachable",
                      f"failed: {kind}", kind)
