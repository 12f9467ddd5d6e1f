"""The quota board: each provider account's latest quota, as its provider last reported it.

It reads the record's `quota` (the windows the provider's home read from the response's
headers). Per (upstream, account) it keeps the reading whose response arrived last (a slow
call that ends after a later one does not put an older reading back), sets the gauge
`tokenbooth_provider_quota_utilization{upstream,account,window}` from it (a window the
latest reading no longer names leaves the gauge), and answers `snapshot()` for
`/api/quota` and the page. `account` is the credential's keyed fingerprint (`key_id`,
`none` without a credential). At most `max_accounts` accounts are kept; readings of more
are counted in `dropped`. Each replica keeps what its own calls saw.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from proxy.quota import Quota
from proxy.record import CallRecord

__all__ = ["QuotaBoard"]


class QuotaBoard:
    name = "quota"

    def __init__(self, registry: CollectorRegistry, max_accounts: int = 100) -> None:
        self.gauge = Gauge(
            "tokenbooth_provider_quota_utilization",
            "Spent fraction (0..1) of a provider quota window, as the latest response of the "
            "account reported it.", ("upstream", "account", "window"), registry=registry)
        self._latest: dict[tuple[str, str], Quota] = {}
        self._max = max_accounts
        self.dropped = 0

    def observe(self, record: CallRecord) -> None:
        quota = record.quota
        if quota is None or not quota.windows:
            return
        key = (record.upstream, record.key_id or "none")
        prev = self._latest.get(key)
        if prev is None and len(self._latest) >= self._max:
            self.dropped += 1
            return
        if prev is not None and prev.seen_at > quota.seen_at:
            return  # an older reading, from a call that ended late
        self._latest[key] = quota
        now = dict(_gauged(quota))
        for window, utilization in now.items():
            self.gauge.labels(*key, window).set(utilization)
        if prev is not None:
            for window, _ in _gauged(prev):
                if window not in now:
                    self.gauge.remove(*key, window)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every account's latest reading, by upstream then account."""
        return [{"upstream": upstream, "account": account, **quota.to_json()}
                for (upstream, account), quota in sorted(self._latest.items())]

    async def aclose(self) -> None:
        return None


def _gauged(quota: Quota) -> list[tuple[str, float]]:
    """(window, utilization) of the windows with a utilization (a gauge needs a number)."""
    return [(w.name, w.utilization) for w in quota.windows if w.utilization is not None]
