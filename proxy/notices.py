"""Budget notices: a window's spend crossing one of its budget's thresholds, or a forecast
that at the current rate (spend so far / time elapsed in the window) the window's limit is
reached before the window ends, told once to the budget's notification sinks.

Found from the records (`due`, called by the budgets sink after a record settles, and once
a second for what other replicas spent): a few comparisons per window a call touched, never
on the call's path. Each notice is offered to the ledger's outbox (`tb_notice`), one row
per notification sink keyed by (budget window, window start, threshold | forecast, sink):
the replica whose INSERT adds the row sends it, so a notice goes out once across restarts
and replicas. Delivery is retried with backoff until the receiver answers 2xx, and the row
records `sent_at`; a row whose sender died (its claim not renewed for `LEASE_SECONDS`) is
claimed by any replica (at start, and every few seconds; on a local SQLite ledger, whose
one process adds every row itself, at start only), so a crash between the insert and
the send still delivers. Right before each POST the claim is renewed if it is still
this replica's (else the row is left to the replica that took it), and `sent_at` is only
recorded under the replica's own claim: a slow receiver holding one replica past the lease
does not make two replicas send the same notice. Each POST carries `Idempotency-Key` (the
notice's key, hashed): a receiver that answered but whose answer was lost sees the same key
again.

Body (`format: json`): `{"kind": "threshold"|"forecast", "budget", "window", "threshold",
"spend_usd", "limit_usd", "resets_at", "message"}` (+ `exhausts_at` for a forecast);
`format: slack`: `{"text": <message>}`. Signed like the export webhook when the sink has a
`secret`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp

from proxy.admission.budgets import Window, threshold_tag
from proxy.config import NotifyConfig
from proxy.config.model import BUDGET_ROLLING
from proxy.keys import iso  # the ledger's time text (`2026-12-03T12:00:00.000Z`)
from proxy.sinks.export import signature
from proxy.tasks import spawn

__all__ = ["Notice", "Notifier", "due", "iso"]

log = logging.getLogger("tokenbooth.notices")
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
POLL_SECONDS = 1.0  # thresholds re-read (other replicas' spend), offers retried
CLAIM_SECONDS = 5.0  # pending notices claimed (this replica's claims renewed)
LEASE_SECONDS = 60.0  # a claim not renewed this long is another replica's to take
POST_SECONDS = 10.0  # one POST at most (well under the lease, renewed before each POST)
QUEUE_NOTICES = 10_000
CLOSE_SECONDS = 5.0
_FORECAST_WINDOWS = ("day", "week", "month")  # a rolling or total window has no end to beat
# A forecast needs a rate worth extrapolating: a tenth of the window gone, and a quarter of
# the limit spent (a cent one minute into a month is no forecast; each window has one).
FORECAST_MIN_ELAPSED = 0.10  # of the window's length
FORECAST_MIN_SPEND = Decimal("0.25")  # of the window's limit


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _usd(v: float) -> str:
    return f"${v:,.2f}" if v >= 1 else f"${v:.4g}"


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Notice:
    kind: str  # threshold | forecast
    key: str  # the window's key (`team:day`), for the outbox
    budget: str
    window: str  # the window's id: day, month, rolling_5h, ...
    window_start: str  # '' for `total`
    threshold: float | None
    spend_usd: Decimal
    limit_usd: float
    resets_at: datetime | None
    notify: tuple[str, ...]
    exhausts_at: datetime | None = None

    @property
    def message(self) -> str:
        spend, limit = _usd(float(self.spend_usd)), _usd(self.limit_usd)
        resets = f"; it resets {_when(self.resets_at)}" if self.resets_at else ""
        if self.kind == "forecast":
            assert self.exhausts_at is not None
            return (f"Budget '{self.budget}': at this rate ({spend} spent so far), the "
                    f"{self.window}'s budget of {limit} runs out on the "
                    f"{_ordinal(self.exhausts_at.day)} ({_when(self.exhausts_at)}), before "
                    f"the {self.window} ends{resets}.")
        pct = float(self.spend_usd) / self.limit_usd * 100
        return (f"Budget '{self.budget}' ({self.window} window): {spend} spent, {pct:.0f}% of "
                f"its {limit} limit (threshold {(self.threshold or 0) * 100:g}%){resets}.")

    def facts(self) -> dict[str, Any]:
        """The JSON body, as documented (also what `/api/notices` shows)."""
        out: dict[str, Any] = {
            "kind": self.kind, "budget": self.budget, "window": self.window,
            "threshold": self.threshold, "spend_usd": float(self.spend_usd),
            "limit_usd": self.limit_usd,
            "resets_at": iso(self.resets_at) if self.resets_at else None}
        if self.exhausts_at is not None:
            out["exhausts_at"] = iso(self.exhausts_at)
        out["message"] = self.message
        return out

    def outbox_key(self, sink: str) -> str:
        tag = "forecast" if self.kind == "forecast" else f"threshold:{self.threshold:g}"
        return f"{self.key}|{self.window_start}|{tag}|{sink}"


@functools.cache
def _fraction(t: float) -> Decimal:
    """A threshold as the exact decimal it was written as (0.8, not 0.8000000000000000444)."""
    return Decimal(repr(t))


def due(w: Window, now: datetime) -> list[Notice]:
    """What `w` has newly earned in its current span (each at most once per span in this
    process; the outbox keeps it once across processes). Cheap: a few comparisons."""
    spec = w.cfg
    if not spec.thresholds and spec.window not in _FORECAST_WINDOWS:
        return []
    w.roll(now)
    spend = w.local_spend()
    limit = w.limit
    if spec.window == BUDGET_ROLLING:
        # a rolling window never ends: its threshold is told when the spend crosses it (it
        # was below at the previous check), and again only after falling below it
        for t in spec.thresholds:
            if spend < limit * _fraction(t):
                w.noticed.discard(threshold_tag(t))
    if spend <= 0:
        return []
    out: list[Notice] = []
    for t in spec.thresholds:  # ascending: the first one not reached ends the search
        if spend < limit * _fraction(t):
            break
        tag = threshold_tag(t)
        if tag in w.noticed:
            continue
        w.noticed.add(tag)
        out.append(Notice("threshold", spec.name, spec.budget, spec.id, w.window_start(now),
                          t, spend, spec.limit_usd, w.window_end, spec.notify))
    if spec.window in _FORECAST_WINDOWS and "forecast" not in w.noticed \
            and limit * FORECAST_MIN_SPEND <= spend < limit:  # the cheap test first
        start, end = w.bounds(now)
        assert start is not None and end is not None
        elapsed = (now - start).total_seconds()
        # in seconds first: a limit far above the spend would put the exhaustion past what a
        # datetime holds (past the window's end either way)
        to_exhaust = elapsed * float(limit / spend)
        if (elapsed >= (end - start).total_seconds() * FORECAST_MIN_ELAPSED
                and to_exhaust < (end - start).total_seconds()):
            exhausts = start + timedelta(seconds=to_exhaust)
            if exhausts < end:
                w.noticed.add("forecast")
                out.append(Notice("forecast", spec.name, spec.budget, spec.id,
                                  w.window_start(now), None, spend, spec.limit_usd, end,
                                  spec.notify, exhausts_at=exhausts))
    return out


@dataclass
class _Pending:
    row: dict[str, Any]
    attempt: int = 0
    next_at: float = 0.0  # loop time


class Notifier:
    """The notices' outbox and their delivery: `offer` (never blocks) from the budgets sink;
    a task adds them to the ledger's outbox and sends the rows it added or claimed."""

    def __init__(self, sinks: Sequence[NotifyConfig]) -> None:
        self._sinks = {s.name: s for s in sinks}
        self._offered: deque[Notice] = deque(maxlen=QUEUE_NOTICES)
        self._pending: dict[int, _Pending] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._outbox: Any = None
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.lease_seconds = LEASE_SECONDS
        self.source: Callable[[], list[Notice]] = list  # every window's due notices, per tick
        self.dropped = 0
        self._healthy = True
        self._shared = False
        self._claimed = False

    def start(self, outbox: Any, replica: str | None = None, shared: bool = False) -> None:
        """Deliver through `outbox` (the ledger's backend). A local ledger (SQLite) has one
        process: what is unsent at start is this one's at once; a shared one waits for a
        claim to go stale (`LEASE_SECONDS`)."""
        self._outbox = outbox
        if replica:
            self.replica = replica
        self._shared = shared
        if not shared:
            self.lease_seconds = 0.0
        self._task = spawn(self._run(), name="tokenbooth-notices")

    def offer(self, notices: Sequence[Notice]) -> None:
        for n in notices:
            if len(self._offered) == self._offered.maxlen:
                self.dropped += 1
            self._offered.append(n)
        if notices:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        claimed_at = -CLAIM_SECONDS
        while not self._stop.is_set():
            try:
                self.offer(self.source())
                await self._add_offered()
                # a local ledger's unsent rows are this process's from the first claim on
                # (it adds the others itself): claimed once, not every few seconds
                if loop.time() - claimed_at >= CLAIM_SECONDS and \
                        (self._shared or not self._claimed):
                    await self._claim()
                    claimed_at, self._claimed = loop.time(), True
                if not self._healthy:
                    log.info("budget notices: the ledger's outbox answers again")
                self._healthy = True
            except Exception as exc:  # the ledger is away: offers wait, rows wait
                if self._healthy:
                    log.warning("budget notices: the ledger's outbox is unreachable (%s: %s);"
                                " notices wait", type(exc).__name__, exc)
                self._healthy = False
            await self._deliver_due(loop.time())
            wait = POLL_SECONDS
            if self._pending:
                wait = max(0.0, min(wait, min(p.next_at for p in self._pending.values())
                                    - loop.time()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _add_offered(self) -> None:
        now = iso(datetime.now(UTC))
        while self._offered:
            n = self._offered[0]
            facts = json.dumps(n.facts(), separators=(",", ":"))
            for sink in n.notify or ("",):  # no sink: kept for the page, nothing to send
                row = await self._outbox.notice_offer((
                    n.outbox_key(sink), sink, n.budget, n.window, n.window_start, n.kind,
                    n.threshold, facts, now, self.replica, now, None if sink else now))
                for r in row:
                    if r["sent_at"] is None:
                        self._pending[r["id"]] = _Pending(r)
            self._offered.popleft()

    async def _claim(self) -> None:
        now = datetime.now(UTC)
        rows = await self._outbox.notice_claim(
            self.replica, iso(now), iso(now - timedelta(seconds=self.lease_seconds)))
        for r in rows:
            if r["id"] not in self._pending:
                self._pending[r["id"]] = _Pending(r)

    async def _deliver_due(self, t: float) -> None:
        for notice_id, p in list(self._pending.items()):
            if p.next_at > t:
                continue
            try:  # still ours? (a slow receiver may have held us past the lease)
                ours = await self._outbox.notice_renew(notice_id, self.replica,
                                                       iso(datetime.now(UTC)))
            except Exception as exc:  # the ledger is away: not sent unclaimed; retried
                log.warning("budget notices: could not renew a claim (%s)", exc)
                return
            if not ours:  # another replica took it: it sends it, not this one
                self._pending.pop(notice_id, None)
                continue
            sink = self._sinks.get(p.row["sink"])
            error: str | None = None
            if sink is None:
                error = f"no notification sink named {p.row['sink']!r} in this config"
            else:
                try:
                    await self._post(sink, p.row)
                except Exception as exc:  # the receiver's failure: retried
                    error = f"{type(exc).__name__}: {exc}"
            try:
                await self._outbox.notice_done(notice_id, self.replica, iso(datetime.now(UTC)),
                                               error)
            except Exception as exc:  # sent (or not): the outbox says so when it answers
                log.warning("budget notices: could not record a delivery (%s)", exc)
                if error is None:  # sent: not again from here; the row's claim will lapse
                    self._pending.pop(notice_id, None)
                    continue
            if error is None:
                self._pending.pop(notice_id, None)
                continue
            delay = BACKOFF_SECONDS[min(p.attempt, len(BACKOFF_SECONDS) - 1)]
            p.attempt += 1
            p.next_at = t + delay
            log.warning("budget notice %s to %s failed (%s); retrying in %gs",
                        p.row["notice_key"], p.row["sink"], error, delay)

    async def _last(self) -> None:
        self.offer(self.source())
        await self._add_offered()
        await self._deliver_due(asyncio.get_running_loop().time())

    async def _post(self, sink: NotifyConfig, row: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=POST_SECONDS), trust_env=False)
        facts = json.loads(row["body"])
        doc = {"text": facts["message"]} if sink.format == "slack" else facts
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": hashlib.sha256(row["notice_key"].encode()).hexdigest()}
        if sink.secret:
            headers["X-Tokenbooth-Signature"] = signature(sink.secret, body)
        async with self._session.post(sink.url, data=body, headers=headers,
                                      allow_redirects=False) as resp:
            await resp.read()
            if not 200 <= resp.status < 300:
                raise RuntimeError(f"receiver answered {resp.status}")

    async def aclose(self) -> None:
        """Stop; what was offered last reaches the outbox and is sent once (bounded): what
        is not sent waits in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, CLOSE_SECONDS)
                await asyncio.wait_for(self._last(), CLOSE_SECONDS)
            except TimeoutError:
                self._task.cancel()
            except Exception as exc:  # the ledger is away: the rows wait
                log.warning("budget notices at shutdown: %s", exc)
        if self._session is not None:
            await self._session.close()
