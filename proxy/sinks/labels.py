"""LabelCap: bounded label (attribute) values, shared by the Prometheus and OTel sinks."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from proxy.record import CallRecord

__all__ = ["LabelCap", "admits"]


def admits(rec: CallRecord) -> bool:
    """Whether a record may bring a new label value: only a call the upstream took."""
    return rec.outcome != "rejected" and rec.status_code is not None and rec.status_code < 400


class LabelCap:
    """Bounded label values per label name: the first N admitted are kept; the rest, and
    values from calls that may not add one (`admit` false), are `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}
        self.overflowed = 0

    def seed(self, label: str, values: Sequence[str]) -> None:
        self.kept(label).update(values)

    def kept(self, label: str) -> set[str]:
        """The values `label` keeps as their own (the live set, only ever growing): a caller
        may test a value against it and skip the call when it is there (same answer)."""
        seen = self._seen.get(label)
        if seen is None:
            seen = self._seen[label] = set()
        return seen

    def __call__(self, label: str, value: str | None, admit: bool = True,
                 known: AbstractSet[str] = frozenset()) -> str:
        """`known`: values that are always their own (a bounded set), outside the cap."""
        v = value if value else "none"
        seen = self._seen.get(label)  # not setdefault: that builds a set on every call
        if seen is None:
            seen = self._seen[label] = set()
        if v in seen or v in known:
            return v
        if not admit or len(seen) >= self.limit:
            self.overflowed += 1
            return "other"
        seen.add(v)
        return v
