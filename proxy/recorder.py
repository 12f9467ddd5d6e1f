"""Recorder: turns CallFacts into one CallRecord (estimate -> price) and fans it out.

`submit()` is a non-blocking put from the request path; a full queue is a counted drop,
never a failed call. The worker builds each record exactly once, off the client's latency,
and hands it to every sink; a failing sink is logged and counted and the others still run.
The last `RECENT` records stay at hand (`find()`), so a call can be read back before the
ledger's next flush has written it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from proxy.dialects import DIALECTS, recorded_model
from proxy.dialects.base import NOTHING_OBSERVED
from proxy.estimate import Estimator
from proxy.mailbox import Mailbox
from proxy.outcome import ending
from proxy.pricing import PriceBook
from proxy.record import CallFacts, CallRecord, LiveCall, iso_utc
from proxy.sinks.base import Sink
from proxy.tasks import spawn
from proxy.tracecontext import SpanIds
from proxy.usage import Usage

__all__ = ["KeyFingerprinter", "Recorder", "background_call_id", "batch_call_id", "build_record",
           "build_records", "secret_beside"]

log = logging.getLogger("tokenbooth.recorder")
_THREAD_BYTES = 64 * 1024  # bodies larger than this are estimated in a worker thread
RECENT = 1000  # records kept at hand for find(): far more than a ledger flush holds
CREATES = 10_000  # pending background creates whose attribution is kept for their usage row
FIND_SECONDS = 5.0  # find() waits this long at most for a call in flight or queued


# json.dumps(separators=...) builds a new encoder per call: this one is built once
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode

def secret_beside(db_path: str) -> bytes:
    """The per-install secret of a SQLite ledger: `<ledger>.secret` beside it (0600),
    made on first use. It keys credential fingerprints and consumer keys' stored hashes."""
    path = Path(f"{db_path}.secret")
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


class KeyFingerprinter:
    """HMAC of a credential with a per-install secret kept beside the database (0600)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._cache: dict[str, str] = {}

    def __call__(self, credential: str | None) -> str | None:
        if not credential:
            return None
        fp = self._cache.get(credential)
        if fp is None:
            fp = "k_" + hmac.new(self._secret, credential.encode(), hashlib.sha256).hexdigest()[:16]
            if len(self._cache) < 10_000:
                self._cache[credential] = fp
        return fp


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
    dialect_estimators = [e for e in (obs.input_estimator, obs.output_estimator) if e]
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


class Recorder:
    def __init__(self, estimator: Estimator, prices: PriceBook,
                 fingerprint: Callable[[str | None], str | None], sinks: Sequence[Sink],
                 queue_size: int = 10_000,
                 on_sink_error: Callable[[str], None] | None = None,
                 on_drop: Callable[[], None] | None = None,
                 recorded: Callable[[list[str]], Awaitable[set[str]]] | None = None) -> None:
        self.estimator = estimator
        self.prices = prices
        self.fingerprint = fingerprint
        self.sinks = list(sinks)
        # Each hook only for the sinks that implement it.
        self._started = [(s.name, s.started) for s in sinks if hasattr(s, "started")]
        self._progress = [(s.name, s.progress) for s in sinks if hasattr(s, "progress")]
        self._handlers = [(s.name, s.handle) for s in sinks if hasattr(s, "handle")]
        # a call whose record will never be built (the queue was full): what admission
        # holds for it is released (`Budgets.lost`), else it would be held for good
        self._lost = [(s.name, s.lost) for s in sinks if hasattr(s, "lost")]
        self._queue: Mailbox[CallFacts | None] = Mailbox(queue_size)
        self._task: asyncio.Task[None] | None = None
        self.inflight: dict[str, LiveCall] = {}
        self.recent: OrderedDict[str, CallRecord] = OrderedDict()  # the last RECENT records
        self._pending: set[str] = set()  # submitted, record not built yet
        self._waiters: dict[str, asyncio.Event] = {}  # find() calls waiting for a record
        self.dropped = 0
        self.recorded = 0
        self._on_sink_error = on_sink_error
        self._on_drop = on_drop  # a call the full queue turned away (metrics)
        # Which batch-line call ids were recorded before (the ledger knows): not again.
        self._recorded = recorded
        # Background creates seen pending, by upstream and response id: their usage row is
        # attributed as they were (agent, session, key), whoever retrieves them.
        self._creates: OrderedDict[str, CallFacts] = OrderedDict()
        # Whether anyone watches calls in flight (the live feed); progress is skipped if not.
        self.watching: Callable[[], bool] = lambda: False

    def start(self) -> None:
        self._task = spawn(self._run(), name="tokenbooth-recorder")

    def started(self, call: LiveCall) -> None:
        self.inflight[call.call_id] = call
        for name, started in self._started:
            try:
                started(call)
            except Exception:
                self._sink_failed(name)

    def progress(self, call: LiveCall) -> None:
        """Running counts of a stream in flight (at most every 0.5 s per call), priced by
        the same code as the final record: input the provider has not reported yet is
        estimated from the request as the record would estimate it."""
        usage = call.usage
        if usage is None and call.usage_source != "none":
            usage = Usage(call.input_tokens, 0, 0, None, call.output_tokens)
        if usage is not None and usage.input_tokens is None:
            est = self._input_estimate(call)
            if est is not None:
                usage = replace(usage, input_tokens=est, cache_read_tokens=0,
                                cache_write_tokens=0)
                call.input_tokens = est
                if call.usage_source == "reported":
                    call.usage_source = "partial"
        if usage is not None and call.model:
            if usage.input_tokens is not None and (usage.cache_read_tokens is None
                                                   or usage.cache_write_tokens is None):
                usage = usage.with_cache_known()
            price = self.prices.price(call.model, call.price_provider, usage, free=call.free,
                                      upstream=call.upstream)
            call.cost_usd = float(price.cost_usd) if price.cost_usd is not None else None
        for name, progress in self._progress:
            try:
                progress(call)
            except Exception:
                self._sink_failed(name)

    def _input_estimate(self, call: LiveCall) -> int | None:
        """The request's input estimate, computed once per call (a large body in a worker
        thread: None until it is ready)."""
        got = call.input_estimate
        if got is None:
            if call.dialect is None or call.request_doc is None:
                return None
            if call.request_bytes <= _THREAD_BYTES:
                got = call.input_estimate = self.estimator.input(
                    call.dialect, call.request_doc, call.model).tokens
            else:
                got = call.input_estimate = asyncio.get_running_loop().run_in_executor(
                    None, self.estimator.input, call.dialect, call.request_doc, call.model)
        if isinstance(got, asyncio.Future):
            if not got.done():
                return None
            try:
                got = call.input_estimate = got.result().tokens
            except Exception:
                log.exception("input estimate failed for call %s", call.call_id)
                got = call.input_estimate = -1  # no running input for this call
        return int(got) if got >= 0 else None

    def submit(self, facts: CallFacts) -> None:
        """Never blocks, never raises: a full queue is a logged, counted drop."""
        try:
            self._queue.put_nowait(facts)
            self._pending.add(facts.call_id)
        except asyncio.QueueFull:
            self.dropped += 1
            self.inflight.pop(facts.call_id, None)
            self._settled(facts.call_id)
            log.error("recorder queue full: call %s dropped", facts.call_id)
            for name, lost in self._lost:
                try:
                    lost(facts.call_id)
                except Exception:
                    log.exception("sink %s failed to release dropped call %s", name,
                                  facts.call_id)
            if self._on_drop is not None:
                try:
                    self._on_drop()
                except Exception:
                    log.exception("counting a dropped record failed")

    def _settled(self, call_id: str) -> None:
        """The call's record is built (or never will be): wake whoever waits for it."""
        self._pending.discard(call_id)
        waiter = self._waiters.pop(call_id, None)
        if waiter is not None:
            waiter.set()

    async def find(self, call_id: str) -> CallRecord | None:
        """A recent call's record: at once when built, else (in flight or queued) when it
        is, waiting at most FIND_SECONDS; None for a call this recorder has not seen lately."""
        if call_id not in self.recent and (call_id in self._pending
                                           or call_id in self.inflight):
            waiter = self._waiters.setdefault(call_id, asyncio.Event())
            try:
                await asyncio.wait_for(waiter.wait(), FIND_SECONDS)
            except TimeoutError:
                pass
        return self.recent.get(call_id)

    def _origin(self, facts: CallFacts) -> CallFacts | None:
        """A background create's attribution, kept (without its body) until its usage is
        seen; the create of a response that exchange saw finished, or None."""
        obs = facts.observation
        if obs.status == "pending" and obs.upstream_request_id:
            self._creates[f"{facts.upstream}\0{obs.upstream_request_id}"] = replace(
                facts, request_body=b"", request_doc=None, observation=NOTHING_OBSERVED)
            if len(self._creates) > CREATES:
                self._creates.popitem(last=False)
        done = obs.background
        if done is None or not done.upstream_request_id:
            return None
        return self._creates.pop(f"{facts.upstream}\0{done.upstream_request_id}", None)

    async def _build(self, facts: CallFacts) -> list[CallRecord]:
        obs = facts.observation
        origin = self._origin(facts)  # a pending create kept; a finished one's create
        if obs.background is not None:  # its usage row, from what its create said
            return build_records(facts, self.estimator, self.prices, self.fingerprint, origin)
        text = obs.text
        big = len(facts.request_body) > _THREAD_BYTES or (text is not None and
                                                          text.size > _THREAD_BYTES)
        needs_estimate = obs.status != "pending" and (
            obs.usage is None or not (obs.usage.has_input and obs.usage.has_output))
        # a large body to estimate, or batch lines (maybe thousands): off the loop
        if (big and needs_estimate) or obs.batch_lines:
            return await asyncio.to_thread(build_records, facts, self.estimator, self.prices,
                                           self.fingerprint)
        return build_records(facts, self.estimator, self.prices, self.fingerprint)

    async def _new_only(self, records: list[CallRecord]) -> list[CallRecord]:
        if self._recorded is None:
            return records
        try:
            seen = await self._recorded([r.call_id for r in records])
        except Exception:
            log.exception("could not check batch lines against the ledger")
            return records
        return [r for r in records if r.call_id not in seen]

    async def _run(self) -> None:
        while True:
            facts = await self._queue.get()
            if facts is None:
                return
            try:
                records = await self._build(facts)
                if facts.batch_id is not None or facts.observation.background is not None:
                    # batch result lines, or a background response's usage: maybe recorded
                    records = await self._new_only(records)
            except Exception:
                log.exception("could not build the record of call %s", facts.call_id)
                self.inflight.pop(facts.call_id, None)
                self._settled(facts.call_id)
                continue
            self.inflight.pop(facts.call_id, None)
            for record in records:
                self.recent[record.call_id] = record
                if len(self.recent) > RECENT:
                    self.recent.popitem(last=False)
            self._settled(facts.call_id)
            for record in records:
                self.recorded += 1
                for name, handle in self._handlers:
                    try:
                        await handle(record)
                    except Exception:
                        log.exception("sink %s failed on call %s", name, record.call_id)
                        self._sink_failed(name)

    def _sink_failed(self, name: str) -> None:
        if self._on_sink_error is not None:
            self._on_sink_error(name)

    async def drain(self) -> None:
        """Record everything queued so far, then stop the worker."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None

    async def aclose(self) -> None:
        await self.drain()
        for sink in self.sinks:
            if not hasattr(sink, "aclose"):
                continue
            try:
                await sink.aclose()
            except Exception:
                log.exception("sink %s failed to close", sink.name)
