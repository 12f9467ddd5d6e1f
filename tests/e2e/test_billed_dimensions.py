"""Billed dimensions end to end: the tier that served the call is what is priced and
recorded, whatever the request asked for."""

from __future__ import annotations

import json
from decimal import Decimal

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks
from tests.e2e.test_ledger_metrics import rows

M = Decimal(1_000_000)


async def test_served_tier_not_requested_tier_is_priced(upstream: FakeUpstream, proxy: Proxy,
                                                        sdk: Sdks) -> None:
    """Asked for priority, served at default: the default price, `service_tier` default."""
    served = json.dumps({
        "id": "chatcmpl-t1", "object": "chat.completion", "created": 1,
        "model": "gpt-5-2025-08-07", "service_tier": "default",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 100,
                  "total_tokens": 1100}}).encode()
    upstream.on("/v1/chat/completions", Reply([served]))
    oa = sdk.openai(f"{proxy.url}/openai/v1")
    out = await oa.chat.completions.create(model="gpt-5", service_tier="priority",
                                           messages=[{"role": "user", "content": "x"}])
    assert out.service_tier == "default"
    await proxy.collector.wait_for(1)
    await proxy.app[state.LEDGER].flush()
    (row,) = rows(proxy)
    # gpt-5 standard: $1.25 in, $10 out per million (priority would be $2.50 / $20)
    assert row["service_tier"] == "default"
    assert Decimal(repr(row["cost_usd"])) == (1000 * Decimal("1.25") + 100 * 10) / M
