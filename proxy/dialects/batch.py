"""Batch-results downloads, shared by the providers' batch parsers: a JSONL file whose lines
are results of calls made at the batch rate. Each result line becomes one call (`BatchLine`);
the provider's own parser reads the response body it carries. Failed lines bill nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from proxy.dialects.base import (
    BaseStream,
    BatchLine,
    DialectBase,
    Observation,
    RequestInfo,
    error_text,
)
from proxy.usage import Usage

__all__ = ["BatchDialect", "LineReader", "failed_line", "succeeded_line"]

# A result line -> (line id, its observation) or None when the line is not a batch result.
LineReader = Callable[[dict[str, Any]], "tuple[str, Observation] | None"]
_NOTHING = Usage(0, 0, 0, None, 0, 0, batch=True)


def succeeded_line(obs: Observation) -> Observation:
    """A result the provider billed at its batch rate. Its text is not kept: a batch file
    reports usage on every line, so nothing is ever estimated from it."""
    usage = replace(obs.usage, batch=True) if obs.usage is not None else None
    return replace(obs, usage=usage, text=None)


def failed_line(error: Any) -> Observation:
    """Errored, canceled or expired: nothing billed (zero, reported), never unpriced."""
    return Observation(_NOTHING, None, status="error", error=error_text(error))


class _Stream(BaseStream):
    __slots__ = ("reader", "lines")

    def __init__(self, reader: LineReader) -> None:
        super().__init__()
        self.reader = reader
        self.lines: list[BatchLine] = []

    def on_frame(self, name: str | None, data: bytes) -> None:
        obj = self._load(data)
        if not isinstance(obj, dict):
            return
        got = self.reader(obj)
        if got is not None:
            self.lines.append(BatchLine(*got))

    def result(self) -> Observation:
        return Observation(status="complete" if self.lines else "unknown", parse_errors=self.errors,
                           batch_lines=tuple(self.lines))


class BatchDialect(DialectBase):
    """A provider's batch parser: its name and its line reader."""

    framing: ClassVar[str] = "ndjson"

    def __init__(self, name: str, reader: LineReader) -> None:
        self.name = name
        self._reader = reader

    def request_info(self, doc: Any) -> RequestInfo:
        return RequestInfo()

    def from_json(self, doc: Any) -> Observation:
        stream = self.new_stream()
        if isinstance(doc, dict):
            got = self._reader(doc)
            if got is not None:
                stream.lines.append(BatchLine(*got))
        return stream.result()

    def new_stream(self) -> _Stream:
        return _Stream(self._reader)
