"""What a ledger backend is: the one interface the rest of the proxy types against.

`LedgerBackend` is what every backend does (write rows, read reports, purge, an export
cursor). `FleetBackend` is what a ledger shared by several proxies adds (one key secret,
budgets and reservations, a heartbeat, the live feed's relay): a backend that is one
offers it as `backend.fleet`, a local one answers None. No caller asks which class a
backend is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

__all__ = ["ExportCursor", "FleetBackend", "LedgerBackend", "Repricer"]

# Rows in a reprice range -> (cost, list cost, price source, call_id) of each row to rewrite.
Repricer = Callable[[list[Any]], list[tuple[float | None, float | None, str | None, str]]]


@runtime_checkable
class ExportCursor(Protocol):
    """An export sink's place in the ledger, and (on a shared ledger) its right to
    deliver: `acquire`, read `rows` after the place, `advance` past them, `release`."""

    @property
    def unavailable(self) -> tuple[type[BaseException], ...]: ...

    async def acquire(self) -> bool: ...

    async def rows(self, limit: int) -> list[tuple[Any, tuple[Any, ...]]]: ...

    async def advance(self, position: Any) -> None: ...

    async def release(self) -> None: ...


@runtime_checkable
class LedgerBackend(Protocol):
    """A ledger: rows in `proxy.record.COLUMNS` order, their hourly and daily roll-up, and
    the reads reports and the API need. Nothing connects before the first use."""

    @property
    def kind(self) -> str:
        """The SQL flavour `proxy.backends.query` writes for it ("sqlite", "postgresql")."""

    @property
    def unavailable(self) -> tuple[type[BaseException], ...]:
        """The errors that mean "the ledger cannot be reached now": rows are spooled and
        replayed, a command says it cannot reach the ledger."""

    @property
    def path(self) -> str | None:
        """The ledger's local file (a report on a file that is not there is an error; the
        key secret lives beside it), or None for a server."""

    @property
    def fleet(self) -> FleetBackend | None:
        """This ledger as shared by a fleet of proxies, or None for a local one."""

    @property
    def flush_seconds(self) -> float:
        """How long the ledger's writer gathers rows into one commit, unless
        `ledger.flush_seconds` says (the backend's trade-off between commits and delay)."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """One transaction: the rows (a call_id held already is skipped) and their
        roll-up (on a shared ledger, also the fleet's budget spend)."""

    async def reset(self, broken: bool = False) -> None:
        """After a failed write: start over (`broken`: drop the connections too)."""

    async def recorded(self, call_ids: Sequence[str]) -> set[str]:
        """Which of these call ids the ledger holds."""

    async def aclose(self) -> None: ...

    async def usage(self, group_by: Sequence[str], since: str | None, until: str | None,
                    filters: Mapping[str, str | None]) -> dict[str, Any]: ...

    async def calls(self, since: str | None, until: str | None,
                    filters: Mapping[str, str | None], limit: int = 100,
                    call_id: str | None = None) -> list[dict[str, Any]]: ...

    async def spend(self, match: Mapping[str, str], since: str | None) -> Decimal: ...

    async def reprice(self, since: str | None, until: str | None, change: Repricer,
                      columns: Sequence[str], dry_run: bool) -> None: ...

    async def request_ids(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """(upstream_request_id, usage_source) of rows holding any of these ids."""

    async def quota_calls(self, since: str | None, until: str | None
                          ) -> list[dict[str, Any]]:
        """Rows holding provider quota headers in the range, oldest first (`report --quota`)."""

    async def rows_after(self, after: int, limit: int) -> list[tuple[int, tuple[Any, ...]]]:
        """(id, row in COLUMNS order) of the next `limit` rows after id `after`."""

    def export_cursor(self, sink: str) -> ExportCursor: ...

    async def purge(self, before: str) -> int:
        """Delete raw rows started before `before`; their hours stay in the roll-up."""

    # Consumer keys (`tb_keys`, rows as `schema.KEY_COLUMNS`; `proxy/keyring.py` uses them)

    async def keys(self) -> tuple[int, list[dict[str, Any]]]:
        """The keys' version (it moves on every change) and every stored key."""

    async def keys_version(self) -> int:
        """The keys' version alone: the cheap check of whether to reload."""

    def keys_signature(self) -> object | None:
        """Something that changes whenever the keys may have (read without a database
        trip), or None: `keys_version()` must be asked."""

    async def add_key(self, row: Mapping[str, Any]) -> None:
        """Store a new key (every KEY_COLUMNS value); the version moves."""

    async def change_key(self, key_id: str, fields: Mapping[str, Any]) -> bool:
        """Set these columns of a key (False: no such key); the version moves."""

    async def key_calls(self, key_id: str, since: str) -> tuple[int, Decimal]:
        """How many calls the key made since `since`, and their cost (priced ones)."""

    async def keys_last_used(self) -> dict[str, str]:
        """When each key that made a call made its last one."""

    # --- budget notices' outbox (issue 20; SQL in `proxy.backends.notices`)
    async def spend_by_hour(self, match: Mapping[str, str], since: str) -> dict[str, Decimal]:
        """A rolling budget's spend per hour start, from `since` on."""

    async def notice_offer(self, values: Sequence[Any]) -> list[dict[str, Any]]:
        """Add a notice (`notices.OFFER`'s values): the row if this call added it, else []."""

    async def notice_claim(self, replica: str, now: str,
                           stale_before: str) -> list[dict[str, Any]]:
        """Claim the unsent notices that are this replica's, nobody's, or gone stale."""

    async def notice_renew(self, notice_id: int, replica: str, now: str) -> bool:
        """Right before a send: the claim renewed if it is still this replica's (False:
        another replica took the row, and sends it)."""

    async def notice_done(self, notice_id: int, replica: str, now: str,
                          error: str | None) -> None:
        """A delivery's outcome: sent (`error` None) or one more failed attempt."""

    async def notices(self, limit: int) -> list[dict[str, Any]]:
        """The newest notices (`notices.notice_json`)."""
    # --- end budget notices


@runtime_checkable
class FleetBackend(LedgerBackend, Protocol):
    """A ledger several proxies share: what they agree on goes through it."""

    async def secret(self) -> bytes:
        """The install's key-fingerprint secret, the same on every replica."""

    async def define_budgets(self, budgets: Sequence[tuple[str, str, dict[str, str],
                                                           str | None]]) -> None: ...

    async def reserve(self, names: Sequence[str], limits: Sequence[Decimal],
                      windows: Sequence[str], call_id: str, worst: Decimal,
                      replica: str) -> str | None:
        """The name of the budget that refuses, or None (reserved)."""

    async def admit(self, budgets: tuple[Sequence[str], Sequence[Decimal], Sequence[str],
                                         Decimal],
                    rates: Sequence[Any], call_id: str, tokens: int, usd: Decimal,
                    replica: str) -> dict[str, Any]:
        """Rate limits and budgets in one round trip (`proxy.admission.rates`)."""

    async def rate_state(self, names: Sequence[str]
                         ) -> dict[str, tuple[int, int, Decimal, Decimal]]:
        """Each rate limit's window in the fleet (for the API and the page)."""

    async def budget_state(self, keys: Sequence[tuple[str, str]]
                           ) -> dict[str, tuple[Decimal, Decimal]]: ...

    async def heartbeat(self, replica: str, watchers: int) -> int: ...

    async def notify(self, payload: str) -> None: ...

    async def listen(self, callback: Callable[[str], None]) -> None: ...

    def listening(self) -> bool: ...

    async def watch_keys(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) whenever any replica changes a key."""

    def watching_keys(self) -> bool: ...
