"""The one table of endings: what happened -> (outcome, status_code, error), every row."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from proxy.outcome import OUTCOMES, End, Ending, ending

ROOT = Path(__file__).resolve().parent.parent

# (what happened, the upstream's status, what the response said) -> the row
CASES = [
    # the body ran to its end
    (None, 200, "complete", Ending("ok", 200, None)),
    (None, 200, "unknown", Ending("ok", 200, None)),  # a body no dialect reads
    (None, 204, "incomplete", Ending("ok", 204, None)),  # the provider's own word is kept
    (None, 399, "complete", Ending("ok", 399, None)),
    (None, 400, "error", Ending("upstream_error", 400, "upstream status 400")),
    (None, 429, "unknown", Ending("upstream_error", 429, "upstream status 429")),
    (None, 503, "error", Ending("upstream_error", 503, "upstream status 503")),
    (None, None, "complete", Ending("ok", None, None)),  # never relayed: an imported answer
    # refused before the upstream was asked: the status is our own
    (End.UNKNOWN_UPSTREAM, None, "unknown", Ending("rejected", 404, "unknown upstream")),
    (End.PATH_ESCAPE, None, "unknown",
     Ending("rejected", 400, "path leaves the upstream's base path")),
    (End.CLIENT_KEY, None, "unknown", Ending("rejected", 401, "client authentication failed")),
    (End.BODY_TOO_LARGE, None, "unknown", Ending("rejected", 413, "request body too large")),
    # the upstream never answered: no status
    (End.CONNECT_TIMEOUT, None, "unknown", Ending("timeout", None, "upstream connect timeout")),
    (End.UNREACHABLE, None, "unknown", Ending("unreachable", None, "upstream unreachable")),
    (End.NO_ANSWER, None, "unknown",
     Ending("timeout", None, "upstream timeout before response")),
    # cut while relaying: the upstream's status stays
    (End.UPSTREAM_CUT, 200, "incomplete",
     Ending("upstream_aborted", 200, "upstream closed the stream early")),
    (End.UPSTREAM_CUT, 200, "complete",  # only a client that leaves after the end is ok
     Ending("upstream_aborted", 200, "upstream closed the stream early")),
    (End.IDLE, 200, "incomplete", Ending("timeout", 200, "upstream idle timeout mid-response")),
    (End.CLIENT_GONE, 200, "incomplete", Ending("client_aborted", 200, "client disconnected")),
    (End.CLIENT_GONE, 200, "unknown", Ending("client_aborted", 200, "client disconnected")),
    (End.CLIENT_GONE, None, "unknown",  # gone before the upstream answered
     Ending("client_aborted", None, "client disconnected")),
    # the provider's own end of stream was seen: the client got the whole answer
    (End.CLIENT_GONE, 200, "complete", Ending("ok", 200, None)),
    (End.SHUTDOWN, 200, "incomplete", Ending("timeout", 200, "cut at shutdown: drain deadline")),
    (End.SHUTDOWN, 200, "complete", Ending("timeout", 200, "cut at shutdown: drain deadline")),
    (End.SHUTDOWN, None, "unknown", Ending("timeout", None, "cut at shutdown: drain deadline")),
]


@pytest.mark.parametrize("end,status,answer,want", CASES)
def test_every_ending(end: End | None, status: int | None, answer: str, want: Ending) -> None:
    assert ending(end, status=status, answer=answer) == want


def test_the_detail_names_the_budget_and_the_exception() -> None:
    assert ending(End.BUDGET, detail="team-daily") == \
        Ending("rejected", 429, "budget team-daily exhausted")
    assert ending(End.BUDGET_UNVERIFIABLE, detail="team-daily") == \
        Ending("rejected", 503, "budget team-daily unverifiable: ledger unreachable")
    assert ending(End.CONNECT_FAILED, detail="ServerDisconnectedError") == \
        Ending("unreachable", None, "upstream error: ServerDisconnectedError")
    assert ending(End.READ_FAILED, detail="ClientOSError", status=200,
                  answer="incomplete") == \
        Ending("upstream_aborted", 200, "upstream error: ClientOSError")
    # a consumer key refused: why, and what it may not use
    assert ending(End.KEY_REFUSED, detail="revoked") == \
        Ending("rejected", 401, "consumer key revoked")
    assert ending(End.KEY_FORBIDDEN, detail="model 'gpt-4o'") == \
        Ending("rejected", 403, "consumer key may not use model 'gpt-4o'")


def test_a_provider_error_in_a_success_body_is_the_error_not_the_outcome() -> None:
    assert ending(None, status=200, answer="error", answer_error="overloaded_error") == \
        Ending("ok", 200, "provider error: overloaded_error")
    assert ending(None, status=200, answer="error") == Ending("ok", 200, "provider error: in body")
    # an error status says more than the body
    assert ending(None, status=500, answer="error", answer_error="overloaded_error") == \
        Ending("upstream_error", 500, "upstream status 500")
    # a call that ended early keeps that reason
    assert ending(End.UPSTREAM_CUT, status=200, answer="error", answer_error="x") == \
        Ending("upstream_aborted", 200, "upstream closed the stream early")


def test_a_batch_line_is_decided_by_its_own_status() -> None:
    assert ending(None, status=200, answer="complete", line=True) == Ending("ok", 200, None)
    assert ending(None, status=200, answer="error", answer_error="expired", line=True) == \
        Ending("upstream_error", 200, "provider error: expired")
    assert ending(None, status=200, answer="incomplete", line=True) == \
        Ending("upstream_error", 200, None)
    # the download's own ending is not the line's: a whole line is a whole result
    assert ending(End.UPSTREAM_CUT, status=200, answer="complete", line=True) == \
        Ending("ok", 200, None)


def test_the_table_covers_every_outcome_and_only_those() -> None:
    reached = {ending(None, status=200).outcome, ending(None, status=500).outcome}
    reached |= {ending(end, detail="x", status=200).outcome for end in End}
    assert reached == set(OUTCOMES) == {"ok", "upstream_error", "client_aborted",
                                        "upstream_aborted", "timeout", "unreachable",
                                        "rejected"}
    # every refusal has its own status; nothing else invents one
    assert {end: ending(end, detail="x").status_code for end in End
            if ending(end, detail="x").outcome == "rejected"} == {
        End.UNKNOWN_UPSTREAM: 404, End.PATH_ESCAPE: 400, End.CLIENT_KEY: 401,
        End.BODY_TOO_LARGE: 413, End.BUDGET: 429, End.BUDGET_UNVERIFIABLE: 503,
        End.KEY_REFUSED: 401, End.KEY_FORBIDDEN: 403, End.RATE_LIMIT: 429}
    # a rate limit's refusal names the limit
    assert ending(End.RATE_LIMIT, detail="key:k1") == \
        Ending("rejected", 429, "rate limit key:k1 exceeded")
    assert all(ending(end, detail="x").status_code is None for end in End
               if ending(end, detail="x").outcome != "rejected")


def _outcome_writes(source: str) -> list[int]:
    """Lines with an `outcome=` keyword naming a literal, or an assignment to an `outcome`
    name or attribute (tuple targets included; a field declared without a value is none)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "outcome" and any(
                isinstance(n, ast.Constant) for n in ast.walk(node.value)):
            found.append(node.value.lineno)
        if isinstance(node, ast.AnnAssign) and node.value is None:
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            flat = [t for tgt in targets for t in (tgt.elts if isinstance(tgt, ast.Tuple)
                                                     else [tgt])]
            if any((t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", None))
                   == "outcome" for t in flat):
                found.append(node.lineno)
    return found


def test_the_write_check_sees_writes() -> None:
    assert _outcome_writes(
        'facts.outcome, facts.error = "rejected", "unknown upstream"\n'
        'outcome = "ok"\n'
        'rec = CallRecord(outcome="ok")\n'
        'facts = replace(facts, outcome="ok" if ok else "upstream_error")\n'
        'live = rec.outcome == "ok"\n'
        'outcome: str\n') == [1, 2, 3, 4]


def test_nothing_but_the_table_writes_an_outcome() -> None:
    """forward.py and the recorder say what happened; only proxy/outcome.py names how a
    call ended (a record is built with `outcome=end.outcome`, never a literal)."""
    table = ROOT / "proxy" / "outcome.py"
    writes = {str(path.relative_to(ROOT)): lines
              for path in sorted((ROOT / "proxy").rglob("*.py"))
              if path != table and (lines := _outcome_writes(path.read_text()))}
    assert writes == {}
