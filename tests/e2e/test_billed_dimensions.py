"""End to end: the tier that served the call is what is priced and recorded, whatever the
request asked for; Claude Code's own session and sub-agent ids attribute its calls."""

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


async def test_claude_code_sessions_and_sub_agents_are_attributed(upstream: FakeUpstream,
                                                                  proxy: Proxy,
                                                                  sdk: Sdks) -> None:
    """Claude Code's session (header or metadata.user_id) becomes the session; the end user
    is the account, not the raw 150-character string; a sub-agent's calls carry its id."""
    from tests.e2e.test_passthrough import ANTHROPIC_JSON

    upstream.on("/v1/messages", Reply([ANTHROPIC_JSON]))
    account = "2f1c9a1e-1111-4a4a-9b9b-123456789abc"
    session = "7d3e5c2a-2222-4b4b-8c8c-abcdefabcdef"
    json_user = json.dumps({"device_id": "d" * 64, "account_uuid": account,
                            "session_id": session})
    legacy_user = f"user_{'e' * 64}_account_{account}_session_{session}"
    an = sdk.anthropic(f"{proxy.url}/anthropic")
    msgs = [{"role": "user", "content": "hi"}]
    await an.messages.create(model="claude-sonnet-4-20250514", max_tokens=9, messages=msgs,
                             metadata={"user_id": json_user})
    await an.messages.create(model="claude-sonnet-4-20250514", max_tokens=9, messages=msgs,
                             metadata={"user_id": legacy_user},
                             extra_headers={"X-Claude-Code-Agent-Id": "agent-42"})
    await an.messages.create(model="claude-sonnet-4-20250514", max_tokens=9, messages=msgs,
                             extra_headers={"X-Claude-Code-Session-Id": "s-header",
                                            "X-Meter-Agent": "claude-code"})
    await an.messages.create(model="claude-sonnet-4-20250514", max_tokens=9, messages=msgs,
                             metadata={"user_id": json_user},
                             extra_headers={"X-Meter-Session": "mine"})
    recs = await proxy.collector.wait_for(4)
    by = [(r.session, r.end_user, r.tags.get("claude_code_agent"), r.agent) for r in recs]
    assert by == [(session, account, None, None), (session, account, "agent-42", None),
                  ("s-header", None, None, "claude-code"), ("mine", account, None, None)]
