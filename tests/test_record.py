"""The record: `to_row()` is the ledger's column order, `to_json()` the API's row, the
unpriced rule, the live call's public shape, and the timestamp format."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from proxy.quota import Quota, QuotaWindow
from proxy.record import COLUMNS, LiveCall, iso_utc
from proxy.usage import Usage
from tests.factories import make_record


def test_to_row_is_the_ledger_column_order_in_storable_types() -> None:
    rec = make_record(call_id="c7", stream=True, cost_usd=Decimal("0.0123"),
                      tags={"team": "core", "agent": "ana"}, agent="ana",
                      priced_units={"web_searches": 2, "input_audio_tokens": 40},
                      service_tier="flex", batch_id="batch_1")
    row = dict(zip(COLUMNS, rec.to_row(), strict=True))
    assert row["call_id"] == "c7" and row["stream"] == 1
    assert row["cost_usd"] == 0.0123 and isinstance(row["cost_usd"], float)
    assert row["tags"] == '{"agent": "ana", "team": "core"}'  # sorted: one text per tag set
    assert row["priced_units"] == '{"input_audio_tokens": 40, "web_searches": 2}'
    assert (row["service_tier"], row["batch_id"]) == ("flex", "batch_1")
    plain = dict(zip(COLUMNS, make_record(cost_usd=None).to_row(), strict=True))
    assert plain["cost_usd"] is None and plain["priced_units"] is None and plain["stream"] == 0


def test_tags_keep_their_characters() -> None:
    row = dict(zip(COLUMNS, make_record(tags={"team": "Ünïcode ✓"}).to_row(), strict=True))
    assert row["tags"] == '{"team": "Ünïcode ✓"}'


def test_to_json_is_the_row_with_json_values() -> None:
    rec = make_record(stream=True, tags={"team": "core"}, priced_units=None)
    doc = rec.to_json()
    assert list(doc) == list(COLUMNS)
    assert doc["stream"] is True and doc["tags"] == {"team": "core"}
    assert doc["priced_units"] == {} and doc["cost_usd"] == 0.001
    json.dumps(doc)  # serializable as it is


def test_the_quota_column_is_the_responses_headers_as_json() -> None:
    quota = Quota({"anthropic-ratelimit-unified-5h-utilization": "0.42",
                   "anthropic-ratelimit-unified-5h-reset": "1785182400"},
                  (QuotaWindow("5h", 0.42, 1785182400.0),), 1785170000.0)
    rec = make_record(quota=quota)
    row = dict(zip(COLUMNS, rec.to_row(), strict=True))
    assert row["quota"] == ('{"anthropic-ratelimit-unified-5h-reset": "1785182400", '
                            '"anthropic-ratelimit-unified-5h-utilization": "0.42"}')
    assert rec.to_json()["quota"] == dict(quota.headers)
    assert dict(zip(COLUMNS, make_record().to_row(), strict=True))["quota"] is None
    assert make_record().to_json()["quota"] is None


def test_unpriced_means_spend_without_a_price() -> None:
    assert make_record(cost_usd=None).unpriced  # ok, with usage
    assert make_record(cost_usd=None, outcome="upstream_error", usage_source="reported").unpriced
    assert not make_record(cost_usd=Decimal(0)).unpriced  # free is priced at 0
    # refused before the upstream: no usage, no spend
    assert not make_record(cost_usd=None, outcome="rejected", usage_source="none").unpriced
    # a background response's create: its cost is not known yet, which is not unpriced
    assert not make_record(cost_usd=None, usage_source="pending").unpriced


def test_a_live_call_shows_its_public_fields_only() -> None:
    call = LiveCall("c1", "2026-11-20T10:00:00.000Z", "openai", "chat", True, "ana", "s1",
                    None, model="gpt-4o", input_tokens=12, tags={"parent_run": "r-1"},
                    usage=Usage(input_tokens=12), request_doc={"messages": ["secret"]},
                    price_provider="openai")
    assert call.to_json() == {
        "call_id": "c1", "started_at": "2026-11-20T10:00:00.000Z", "upstream": "openai",
        "operation": "chat", "stream": True, "agent": "ana", "session": "s1", "run": None,
        "model": "gpt-4o", "input_tokens": 12, "output_tokens": None, "cost_usd": None,
        "usage_source": "none", "tags": {"parent_run": "r-1"}}


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_iso_utc_matches_datetime_formatting(ts: float) -> None:
    expected = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert iso_utc(ts) == expected


def test_iso_utc_rounds_into_the_next_second() -> None:
    assert iso_utc(1767225599.9999996) == "2026-01-01T00:00:00.000Z"
    assert iso_utc(1767225599.9994) == "2025-12-31T23:59:59.999Z"
