"""The record builder: CallFacts in, frozen CallRecords out (estimate -> price).

`build_record` is the only code that combines usage, estimation and price, and the only one
that builds a CallRecord (live calls, batch result lines, imported transcripts);
`build_records` turns one call's facts into its records: one per call, one per result line
of a batch download, plus the usage row of a background response seen finished. Their ids
(`batch_call_id`, `background_call_id`) are stable, so a row is written once however often
it is seen. Pure and synchronous: the Recorder runs it off the client's latency.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

from proxy.dialects import DIALECTS, recorded_model
from proxy.estimate import Estimator
from proxy.outcome import ending
from proxy.pricing import PriceBook
from proxy.record import CallFacts, CallRecord, iso_utc
from proxy.tracecontext import SpanIds
from proxy.usage import Usage

__all__ = ["background_call_id", "batch_call_id", "build_record", "build_records"]

# json.dumps(separators=...) builds a new encoder per call: this one is built once
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def _source(reported: bool, estimated: bool) -> str:
    return "reported" if reported else "estimated" if estimated else "none"


def batch_call_id(upstream: str, batch_id: str, line_id: str) -> str:
    """The same id every time a batch's result line is downloaded: written once."""
    digest = hashlib.sha256(f"{upstream}\0{batch_id}\0{line_id}".encode()).hexdigest()
    return f"b{digest[:23]}"


def background_call_id(upstream: str, response_id: str) -> str:
    """The one id of a background response's usage row, however often it is seen finished
    (`g` is no hex digit: never the id of a live call)."""
    digest = hashlib.sha256(f"{upstream}\0{response_id}".encode()).hexdigest()
    return f"g{digest[:23]}"


def _with_background(facts: CallFacts, own: CallRecord, estimator: Estimator,
                     prices: PriceBook, fingerprint: Callable[[str | None], str | None],
                     origin: CallFacts | None) -> list[CallRecord]:
    """The exchange's own record, and the usage row of a background response it saw
    finished: one row of its own (id from the response id), attributed as its create was
    when this proxy saw the create (`origin`), else as the exchange that saw it finished."""
    done = facts.observation.background
    if done is None or not done.upstream_request_id:
        return [own]
    linked = replace(facts, call_id=background_call_id(facts.upstream, done.upstream_request_id),
                     operation="responses", parser="openai.responses", observation=done,
                     end=None, end_detail=None, first_byte=None, request_body=b"",
                     request_doc=None, tags_cleaned=0, attribution_unreadable=0,
                     trace=_sibling(facts))
    if origin is not None:
        linked = replace(linked, tags=origin.tags, credential=origin.credential, key=origin.key,
                         client=origin.client, request_info=origin.request_info,
                         path_model=origin.path_model, end_user=origin.end_user)
    return [own, build_record(linked, estimator, prices, fingerprint, linked=True)]


def _sibling(facts: CallFacts) -> SpanIds | None:
    """A record of its own gets a span of its own (same parent as the call's)."""
    return facts.trace.sibling() if facts.trace is not None else None


def build_records(facts: CallFacts, estimator: Estimator, prices: PriceBook,
                  fingerprint: Callable[[str | None], str | None],
                  origin: CallFacts | None = None) -> list[CallRecord]:
    """One record per call; a batch-results download is one call per result line (with
    none of its own: the download itself bills nothing); an exchange that saw a background
    response finished adds that response's usage row (`origin`: what its create said)."""
    if facts.observation.background is not None:
        own = build_record(facts, estimator, prices, fingerprint)
        return _with_background(facts, own, estimator, prices, fingerprint, origin)
    lines = facts.observation.batch_lines
    if not lines or facts.batch_id is None:
        if facts.batch_id is not None:  # no result lines: an ordinary download
            facts = replace(facts, operation="other", batch_id=None)
        return [build_record(facts, estimator, prices, fingerprint)]
    # The download's own facts (cleaned tags, unreadable lines) are counted once: on the
    # first line's record.
    download_errors = facts.observation.parse_errors
    download = facts.trace  # the upstream request named it: emitted, the lines under it
    recs = [build_record(replace(facts, call_id=batch_call_id(facts.upstream, facts.batch_id,
                                                              line.line_id),
                                 operation="batch",
                                 observation=replace(line.observation, parse_errors=line
                                                     .observation.parse_errors + download_errors)
                                 if i == 0 and download_errors else line.observation,
                                 tags_cleaned=facts.tags_cleaned if i == 0 else 0,
                                 attribution_unreadable=facts.attribution_unreadable
                                 if i == 0 else 0,
                                 trace=download.child() if download is not None else None),
                         estimator, prices, fingerprint, line=True)
            for i, line in enumerate(lines)]
    if download is not None:
        recs[0] = replace(recs[0], download_trace=download)
    return recs


def build_record(facts: CallFacts, estimator: Estimator, prices: PriceBook,
                 fingerprint: Callable[[str | None], str | None],
                 line: bool = False, linked: bool = False) -> CallRecord:
    """The only code that combines usage, estimation and price, and the only one that
    builds a CallRecord (live calls, batch result lines, imported transcripts): a new
    column is written here once. Pure and synchronous. `line`: the facts are one result
    line of a batch download. `linked`: the usage row of a background response: what was
    reported, never estimated. A background response not finished yet (`pending`) is
    neither estimated nor priced: its cost is not known yet."""
    obs = facts.observation
    dialect = DIALECTS.get(facts.parser) if facts.parser else None
    usage = obs.usage or Usage()
    info = facts.request_info
    doc: Any = facts.request_doc
    # Parsed here only when the handler did not try (records built outside it): the
    # handler sets request_info whenever it parsed, even a body that was not JSON.
    if doc is None and info is None and dialect is not None and facts.request_body:
        try:
            doc = json.loads(facts.request_body)
        except ValueError:
            doc = None
    if info is None and dialect is not None:
        info = dialect.request_info(doc)
    request_model = (info.model if info else None) or facts.path_model
    free_call = dialect is not None and dialect.free
    estimator_name = None
    model_hint = obs.response_model or request_model
    reached = facts.status_code is not None and facts.status_code < 400
    if dialect is not None and reached:
        # what the provider bills by the request (audio seconds, characters), measured
        obs = dialect.settle(doc, obs)
        usage = obs.usage or Usage()
    in_reported, out_reported = usage.has_input, usage.has_output
    in_est = out_est = False
    # the dialect's own estimators (rare): a list only when there is one
    dialect_estimators = [e for e in (obs.input_estimator, obs.output_estimator) if e] \
        if obs.input_estimator or obs.output_estimator else None
    if obs.input_estimator is not None and in_reported:
        in_reported, in_est = False, True
    if obs.output_estimator is not None and out_reported:
        out_reported, out_est = False, True
    pending = obs.status == "pending"  # billed later: recorded when seen finished
    if dialect is not None and reached and not (linked or pending):
        # the provider took the call: it may have billed
        if not in_reported and not in_est and doc is not None:
            est = estimator.input(dialect, doc, model_hint)
            usage = replace(usage, input_tokens=est.tokens, cache_read_tokens=0,
                            cache_write_tokens=0)
            in_est, estimator_name = True, est.estimator
        if out_est:
            pass  # the dialect estimated it (output audio from its duration)
        elif not out_reported and dialect.has_output:
            est = estimator.output(obs.output_text, model_hint, dialect,
                                   obs.output_chars_dropped)
            usage = replace(usage, output_tokens=est.tokens, reasoning_tokens=None)
            out_est, estimator_name = True, est.estimator
        elif not out_reported:
            usage = replace(usage, output_tokens=0)
            out_reported = True
    if dialect_estimators:
        estimator_name = "+".join(dict.fromkeys(
            [*([estimator_name] if estimator_name else []), *dialect_estimators]))
    if in_reported and out_reported:
        usage_source = "measured" if obs.measured else "reported"
    elif (in_reported or out_reported) and (in_est or out_est):
        usage_source = "partial"
    elif in_est or out_est:
        usage_source = "estimated"
    elif in_reported or out_reported:
        usage_source = "partial"
    else:
        usage_source = "pending" if pending else "none"
    if facts.usage_from is not None:
        usage_source = facts.usage_from
    if usage.input_tokens is not None and (usage.cache_read_tokens is None
                                           or usage.cache_write_tokens is None):
        usage = usage.with_cache_known()
    model = obs.response_model or request_model
    if usage_source in ("none", "pending"):
        price_cost: Decimal | None = Decimal(0) if free_call else None
        list_cost = price_cost
        price_src, priced_model = ("free" if price_cost is not None else None), model
    else:
        price = prices.price(model, facts.price_provider, usage, free=facts.free or free_call,
                             provider_cost=obs.provider_cost_usd, upstream=facts.upstream)
        price_cost, price_src, priced_model = price.cost_usd, price.source, price.model
        list_cost = price.list_cost_usd
    priced_model = recorded_model(facts.dialect, request_model, priced_model)
    ttft = None
    if facts.stream and facts.first_byte is not None:
        ttft = round((facts.first_byte - facts.t0) * 1000, 3)
    duration = max(facts.ended - facts.t0, 0.0)
    if facts.logged_at is not None:  # a call read from a log: its time as written
        started_at = ended_at = facts.logged_at
    else:
        started_at, ended_at = iso_utc(facts.started), iso_utc(facts.started + duration)
    end = ending(facts.end, detail=facts.end_detail, status=facts.status_code,
                 answer=obs.status, answer_error=obs.error, line=line)
    tags = facts.tags
    return CallRecord(
        call_id=facts.call_id, started_at=started_at, ended_at=ended_at,
        duration_ms=round(duration * 1000, 3),
        ttft_ms=ttft, upstream=facts.upstream, dialect=facts.dialect,
        operation=facts.operation, method=facts.method, path=facts.path,
        request_model=request_model, response_model=obs.response_model, model=priced_model,
        stream=facts.stream, status_code=end.status_code, outcome=end.outcome,
        input_tokens=usage.input_tokens, cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens, total_tokens=usage.total_tokens,
        usage_source=usage_source, estimator=estimator_name if (in_est or out_est) else None,
        cost_usd=price_cost, price_source=price_src, agent=tags.get("agent"),
        session=tags.get("session"), run=tags.get("run"), tags=tags,
        end_user=facts.end_user, client=facts.client,
        key_id=fingerprint(facts.credential),
        upstream_request_id=obs.upstream_request_id or facts.request_id_header, error=end.error,
        usage_raw=_COMPACT(obs.usage_raw) if obs.usage_raw is not None else None,
        service_tier=usage.service_tier, priced_units=usage.priced_units() or None,
        batch_id=facts.batch_id if facts.operation == "batch" else None,
        quota=None if line else facts.quota,  # a batch's result lines: not this response
        input_source=_source(in_reported, in_est), output_source=_source(out_reported, out_est),
        tags_cleaned=facts.tags_cleaned, parse_errors=obs.parse_errors,
        attribution_unreadable=facts.attribution_unreadable,
        list_cost_usd=list_cost,
        consumer_key=facts.key.id if facts.key is not None else None,
        trace=facts.trace, started_ts=facts.started, response_id=obs.upstream_request_id,
    )
