"""Recorder: turns CallFacts into one CallRecord (estimate -> price) and fans it out.

`submit()` is a non-blocking put from the request path; a full queue is a counted drop,
never a failed call. The worker builds each record exactly once, off the client's latency,
and hands it to every sink; a failing sink is logged and counted and the others still run.
The last `RECENT` records stay at hand (`find()`), so a call can be read back before the
ledger's next flush has written it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from proxy.build import build_records
from proxy.dialects.base import NOTHING_OBSERVED
from proxy.estimate import Estimator
from proxy.mailbox import Mailbox
from proxy.pricing import PriceBook
from proxy.record import CallFacts, CallRecord, LiveCall
from proxy.sinks.base import Sink
from proxy.tasks import spawn
from proxy.usage import Usage

__all__ = ["Recorder"]

log = logging.getLogger("tokenbooth.recorder")
_THREAD_BYTES = 64 * 1024  # bodies larger than this are estimated in a worker thread
RECENT = 1000  # records kept at hand for find(): far more than a ledger flush holds
CREATES = 10_000  # pending background creates whose attribution is kept for their usage row
FIND_SECONDS = 5.0  # find() waits this long at most for a call in flight or queued


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
        # Each finished record: to `observe` when the sink has it (no coroutine per record),
        # else to `handle`, awaited
        self._handlers = [(s.name, getattr(s, "observe", None), getattr(s, "handle", None))
                          for s in sinks if hasattr(s, "observe") or hasattr(s, "handle")]
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
        if self._waiters:  # most often nobody waits
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
        # a large body to estimate, or batch lines (maybe thousands): off the loop (whether
        # it needs an estimate is asked only of a large one)
        if (big and obs.status != "pending" and (
                obs.usage is None or not (obs.usage.has_input and obs.usage.has_output))) \
                or obs.batch_lines:
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
            recent = self.recent
            for record in records:
                recent[record.call_id] = record
                if len(recent) > RECENT:
                    recent.popitem(last=False)
            self._settled(facts.call_id)
            for record in records:
                self.recorded += 1
                for name, observe, handle in self._handlers:
                    try:
                        if observe is not None:
                            observe(record)
                        elif handle is not None:
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
