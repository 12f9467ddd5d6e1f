"""How a call ended: the one table from what happened to `(outcome, status_code, error)`.

The handler notes what it saw (an `End`, or none when the response's body ran to its end)
and the upstream's status; the response's own word (`Observation.status`) comes from the
meter. `ending()` turns those into the row's outcome, status code and error, for live calls,
batch result lines and imported transcripts alike. A new transport adds a row to the table
(or a keyword here), never an outcome written where it happens. Pure: no I/O.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

__all__ = ["OUTCOMES", "End", "Ending", "ending"]

OUTCOMES = ("ok", "upstream_error", "client_aborted", "upstream_aborted", "timeout",
            "unreachable", "rejected")
"""Every value of the ledger's `outcome` column."""


class End(Enum):
    """What ended a call other than its response's body running to its end. Each member is
    `(outcome, status_code, error)`; a status code of None keeps the upstream's (if it
    answered at all) and a `{}` in the error is the detail (a budget, an exception's type)."""

    # Refused before the upstream was asked: our own answer's status is the row's.
    UNKNOWN_UPSTREAM = ("rejected", 404, "unknown upstream")
    PATH_ESCAPE = ("rejected", 400, "path leaves the upstream's base path")
    CLIENT_KEY = ("rejected", 401, "client authentication failed")
    KEY_REFUSED = ("rejected", 401, "consumer key {}")  # revoked, expired
    KEY_FORBIDDEN = ("rejected", 403, "consumer key may not use {}")  # an upstream, a model
    BODY_TOO_LARGE = ("rejected", 413, "request body too large")
    BUDGET = ("rejected", 429, "budget {} exhausted")
    BUDGET_UNVERIFIABLE = ("rejected", 503, "budget {} unverifiable: ledger unreachable")
    RATE_LIMIT = ("rejected", 429, "rate limit {} exceeded")
    # The upstream never answered.
    CONNECT_TIMEOUT = ("timeout", None, "upstream connect timeout")
    UNREACHABLE = ("unreachable", None, "upstream unreachable")
    CONNECT_FAILED = ("unreachable", None, "upstream error: {}")
    NO_ANSWER = ("timeout", None, "upstream timeout before response")
    # The answer was cut while its body was being relayed.
    UPSTREAM_CUT = ("upstream_aborted", None, "upstream closed the stream early")
    IDLE = ("timeout", None, "upstream idle timeout mid-response")
    READ_FAILED = ("upstream_aborted", None, "upstream error: {}")
    # Whenever it happens.
    CLIENT_GONE = ("client_aborted", None, "client disconnected")
    SHUTDOWN = ("timeout", None, "cut at shutdown: drain deadline")

    _value_: tuple[str, int | None, str]


class Ending(NamedTuple):
    outcome: str
    status_code: int | None
    error: str | None


def ending(end: End | None, *, detail: str | None = None, status: int | None = None,
           answer: str = "unknown", answer_error: str | None = None,
           line: bool = False) -> Ending:
    """The row's `(outcome, status_code, error)`.

    `end`: what ended the call early (None: the response's body ran to its end, or the
    call was never relayed, as an imported transcript's); `detail` fills the error's `{}`.
    `status`: the upstream's HTTP status, None if it never answered. `answer`, `answer_error`:
    what the response itself said (`complete | incomplete | error | unknown`, and the
    provider's error text). `line`: a batch result line, whose own status decides.
    """
    if line:  # the download's HTTP status stays; the line says how its request ended
        return Ending("ok" if answer == "complete" else "upstream_error", status,
                      _provider_error(answer, answer_error))
    if end is None:
        if status is not None and status >= 400:
            return Ending("upstream_error", status, f"upstream status {status}")
        return Ending("ok", status, _provider_error(answer, answer_error))
    if end is End.CLIENT_GONE and answer == "complete":
        # The provider's own end of stream ([DONE], message_stop, response.completed) was
        # seen: the client got the whole answer. The openai SDK closes right after [DONE],
        # often before the upstream's body has formally ended.
        return Ending("ok", status, None)
    outcome, own_status, error = end.value
    return Ending(outcome, own_status if own_status is not None else status,
                  error.format(detail) if "{}" in error else error)


def _provider_error(answer: str, answer_error: str | None) -> str | None:
    """A provider error in a body that came with a success status (or on a batch line)."""
    return f"provider error: {answer_error or 'in body'}" if answer == "error" else None
