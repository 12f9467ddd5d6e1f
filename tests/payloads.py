"""Loads the recorded-shape payloads under tests/payloads/ and their expected records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.dialects import DIALECTS, Observation
from proxy.meter import Meter

ROOT = Path(__file__).parent / "payloads"
CONTENT_TYPES = {".sse": "text/event-stream", ".ndjson": "application/x-ndjson",
                 ".json": "application/json", ".jsonarray": "application/json",
                 ".eventstream": "application/vnd.amazon.eventstream",
                 ".jsonl": "application/octet-stream"}


@dataclass(frozen=True)
class Payload:
    path: Path
    body: bytes
    expected: dict[str, Any]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.path.suffix]

    @property
    def path_stream(self) -> bool:
        return self.path.suffix == ".jsonarray"

    @property
    def id(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def all_payloads() -> list[Payload]:
    out = []
    for path in sorted(ROOT.glob("*/*")):
        if path.name.endswith(".expected.json") or path.suffix not in CONTENT_TYPES:
            continue
        expected = json.loads(path.with_name(path.stem + ".expected.json").read_text())
        out.append(Payload(path, path.read_bytes(), expected))
    return out


def meter_for(p: Payload) -> Meter:
    return Meter(DIALECTS[p.expected["parser"]], p.content_type, None, p.path_stream)


def run_chunks(p: Payload, chunks: list[bytes]) -> Observation:
    meter = meter_for(p)
    for c in chunks:
        meter.feed(c)
    return meter.finish()


USAGE_DEFAULTS = {"units": None, "service_tier": None, "batch": False}


def usage_dict(obs: Observation) -> dict[str, Any] | None:
    """Every billed unit of the observation; compare with `expected_usage()`."""
    if obs.usage is None:
        return None
    u = obs.usage
    return {k: getattr(u, k) for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                                       "cache_write_1h_tokens", "output_tokens",
                                       "reasoning_tokens", *USAGE_DEFAULTS)}


def expected_usage(exp: dict[str, Any] | None) -> dict[str, Any] | None:
    """An expectation's usage, with the fields it leaves out at their defaults."""
    return None if exp is None else {**USAGE_DEFAULTS, **exp}
