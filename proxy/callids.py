"""Call ids: the id each call carries from its first moment (its row, its live entry, its
`X-Meter-Call-Id` header). An id is 12 random bytes from the OS as 24 hex digits; the bytes
are drawn in batches, so a call costs no system call of its own, and a forked child never
reuses its parent's batch. `new_call_id()` is the one source the Forwarder draws from.
"""

from __future__ import annotations

import os

__all__ = ["new_call_id"]


class _CallIds:
    """Call ids: 12 random bytes from the OS as 24 hex digits, drawn 256 at a time (one
    getrandom() system call per 256 calls instead of one per call; a forked child draws
    its own)."""

    _BATCH = 256

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._hex, self._at = "", 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = os.urandom(12 * self._BATCH).hex(), 0
        self._at = at + 24
        return self._hex[at:at + 24]


new_call_id = _CallIds()
