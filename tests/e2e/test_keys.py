"""Consumer keys end to end, through the API and the real SDKs: a key is issued once, used
as the provider key (the proxy supplies its own), names the call's client and tags it, is
held to its upstreams and models (403 in the SDK's shape), stops at once when revoked or
expired (401), is counted by a budget that matches it, and sees itself at /api/me."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from proxy.backends import open_backend
from proxy.keyring import KeyAdmin, install_secret
from proxy.keys import parse_spec
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, StartProxy

PROVIDER_KEY = "sk-provider-secret"
LEGACY = "ck-legacy-client"
# pricing: 2.5 USD per million input tokens, 10 per million output
PRICES = {"models": {"keyed-model": {"input": 2.5, "output": 10.0}}}
CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "keyed-model",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}).encode()
COST = 1000 * 2.5 / 1e6 + 100 * 10.0 / 1e6  # 0.0025 + 0.001 = 0.0035 USD
MSGS = [{"role": "user", "content": "hi"}]


def keyed(upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    """openai and anthropic with the provider's key set here; ollama without one."""
    return {"pricing": PRICES, "auth": {"client_keys": {"legacy": LEGACY}},
            "upstreams": {"openai": {"url": upstream.url, "api_key": PROVIDER_KEY},
                          "anthropic": {"url": upstream.url, "api_key": PROVIDER_KEY}},
            **extra}


async def api(proxy: Proxy, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(
            method, f"{proxy.url}{path}", json=body, headers=headers) as r:
        return r.status, await r.json()


async def until(proxy: Proxy, path: str, headers: dict[str, str],
                cond: Callable[[Any], Any]) -> Any:
    """GET `path` until `cond(body)` holds (bounded: 5 s)."""
    body: Any = None
    for _ in range(100):
        status, body = await api(proxy, "GET", path, headers=headers)
        if status == 200 and cond(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path}: condition not met in 5 s (last: {body})")


async def test_issue_use_and_revoke_a_key_with_the_openai_sdk(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(**keyed(upstream))
    status, made = await api(proxy, "POST", "/api/keys", {
        "name": "alice", "tags": {"team": "ml", "agent": "from-key"},
        "limits": {"requests_per_minute": 100}})
    assert status == 201 and made["key"].startswith("tb-") and made["id"].startswith("key_")
    assert made["last4"] == made["key"][-4:] and made["revoked_at"] is None
    secret = made["key"]
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key=secret,
                        default_headers={"X-Meter-Agent": "from-header"})
    reply = await client.chat.completions.create(model="keyed-model", messages=MSGS)
    assert reply.choices[0].message.content == "ok"
    # the provider got our key, never the consumer key
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    [rec] = await proxy.collector.wait_for(1)
    assert rec.client == "alice" and rec.consumer_key == made["id"]
    assert rec.tags["team"] == "ml" and rec.agent == "from-header"  # X-Meter-* wins
    # listed (last use from the ledger, once its row is written), never with its secret
    listed = await until(proxy, "/api/keys", {}, lambda b: b["keys"][0]["last_used_at"])
    assert listed["keys"][0]["last_used_at"] == rec.started_at
    assert secret not in json.dumps(listed) and "hash" not in listed["keys"][0]
    # a client key from the config keeps working beside it
    legacy = sdk.openai(f"{proxy.url}/openai/v1", api_key=LEGACY)
    await legacy.chat.completions.create(model="keyed-model", messages=MSGS)
    assert (await proxy.collector.wait_for(2))[1].client == "legacy"
    # revoked: refused at once, in the SDK's shape, and recorded
    status, gone = await api(proxy, "DELETE", f"/api/keys/{made['id']}")
    assert status == 200 and gone["revoked_at"]
    with pytest.raises(openai.AuthenticationError) as err:
        await client.chat.completions.create(model="keyed-model", messages=MSGS)
    assert err.value.status_code == 401 and "revoked" in err.value.message
    rec = (await proxy.collector.wait_for(3))[2]
    assert (rec.outcome, rec.status_code, rec.error) == \
        ("rejected", 401, "consumer key revoked")
    assert rec.consumer_key is None and len(upstream.requests) == 2
    ledger_bytes = b"".join(p.read_bytes() for p in Path(proxy.config.ledger.path).parent.glob(
        "ledger.db*"))
    assert secret.encode() not in ledger_bytes  # stored as its HMAC only


async def test_a_keys_tags_beat_other_tools_headers_and_yield_only_to_x_meter(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    """Other tools' attribution is read before the key is known; the key's tags still win
    over it (Portkey metadata, LiteLLM tags), and only an X-Meter-* header beats them."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(**keyed(upstream))
    status, made = await api(proxy, "POST", "/api/keys", {"name": "dana",
                                                          "tags": {"team": "ml"}})
    assert status == 201
    others = {"x-portkey-metadata": json.dumps({"team": "other", "env": "prod"}),
              "x-litellm-tags": "team:x"}
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key=made["key"], default_headers=others)
    await client.chat.completions.create(model="keyed-model", messages=MSGS)
    meter = sdk.openai(f"{proxy.url}/openai/v1", api_key=made["key"],
                       default_headers={**others, "X-Meter-Team": "z"})
    await meter.chat.completions.create(model="keyed-model", messages=MSGS)
    first, second = await proxy.collector.wait_for(2)
    assert first.tags["team"] == "ml" and first.tags["env"] == "prod"  # the rest still read
    assert first.tags["litellm_tags"] == "team:x"
    assert second.tags["team"] == "z" and second.consumer_key == made["id"]


async def test_a_key_is_held_to_its_upstreams_and_models(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(**keyed(upstream))
    _, made = await api(proxy, "POST", "/api/keys", {
        "name": "narrow", "upstreams": ["openai", "oll*"], "models": ["keyed-*"]})
    oa = sdk.openai(f"{proxy.url}/openai/v1", api_key=made["key"])
    await oa.chat.completions.create(model="keyed-model", messages=MSGS)
    with pytest.raises(openai.PermissionDeniedError) as err:
        await oa.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert err.value.status_code == 403
    assert "model 'gpt-4o'" in err.value.message and "keyed-*" in err.value.message
    an = sdk.anthropic(f"{proxy.url}/anthropic", api_key=made["key"])
    with pytest.raises(anthropic.PermissionDeniedError) as aerr:
        await an.messages.create(model="keyed-model", max_tokens=5, messages=MSGS)
    assert "upstream 'anthropic'" in aerr.value.message
    assert isinstance(aerr.value.body, dict) and aerr.value.body["type"] == "error"
    recs = await proxy.collector.wait_for(3)
    assert [(r.outcome, r.status_code) for r in recs] == \
        [("ok", 200), ("rejected", 403), ("rejected", 403)]
    assert recs[1].error == "consumer key may not use model 'gpt-4o'"
    assert recs[2].client == "narrow" and recs[2].consumer_key == made["id"]
    assert len(upstream.requests) == 1
    # an upstream without api_key: the consumer key is taken off, the call goes without one
    ol = sdk.openai(f"{proxy.url}/ollama/v1", api_key=made["key"])
    await ol.chat.completions.create(model="keyed-model", messages=MSGS)
    assert "Authorization" not in upstream.requests[-1].headers
    assert made["key"] not in json.dumps(upstream.requests[-1].headers)


async def test_expired_unknown_and_changed_keys(upstream: FakeUpstream,
                                                start_proxy: StartProxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(**keyed(upstream))
    _, made = await api(proxy, "POST", "/api/keys",
                        {"name": "temp", "expires_at": "2020-01-01T00:00:00Z"})
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key=made["key"])
    with pytest.raises(openai.AuthenticationError) as err:
        await client.chat.completions.create(model="keyed-model", messages=MSGS)
    assert "expired" in err.value.message and made["id"] in err.value.message
    # extended: works again at once
    status, changed = await api(proxy, "PATCH", f"/api/keys/{made['id']}",
                                {"expires_at": "30d", "name": "temp2"})
    assert status == 200 and changed["name"] == "temp2" and changed["expires_at"] > "2026"
    await client.chat.completions.create(model="keyed-model", messages=MSGS)
    # a tb- key nobody issued: refused, even where the upstream needs no key
    for base in ("openai", "ollama"):
        stranger = sdk.openai(f"{proxy.url}/{base}/v1", api_key="tb-" + "x" * 43)
        with pytest.raises(openai.AuthenticationError) as err:
            await stranger.chat.completions.create(model="keyed-model", messages=MSGS)
        assert "unknown" in err.value.message
    recs = await proxy.collector.wait_for(4)
    assert [r.error for r in recs] == ["consumer key expired", None, "consumer key unknown",
                                       "consumer key unknown"]
    assert recs[1].client == "temp2" and len(upstream.requests) == 1


async def test_bad_requests_to_the_keys_api(upstream: FakeUpstream,
                                            start_proxy: StartProxy) -> None:
    proxy = await start_proxy(**keyed(upstream))
    cases = [("POST", "/api/keys", {}, 400, "name"),
             ("POST", "/api/keys", {"name": "a", "limits": {"requests_per_minute": -1}}, 400,
              "limits.requests_per_minute"),
             ("POST", "/api/keys", {"name": "a", "owner": "b"}, 400, "owner"),
             ("GET", "/api/keys/key_nope", None, 404, None),
             ("PATCH", "/api/keys/key_nope", {"name": "x"}, 404, None),
             ("DELETE", "/api/keys/key_nope", None, 404, None)]
    for method, path, body, want, param in cases:
        status, got = await api(proxy, method, path, body)
        assert status == want, (method, path, got)
        assert got["error"]["message"]
        if param:
            assert got["error"]["param"] == param
    _, made = await api(proxy, "POST", "/api/keys", {"name": "a"})
    status, got = await api(proxy, "PATCH", f"/api/keys/{made['id']}", {"models": "gpt"})
    assert status == 400 and got["error"]["param"] == "models"
    # a form (what another site's page could post) is not a key request
    async with aiohttp.ClientSession() as s, s.post(
            f"{proxy.url}/api/keys", data="{\"name\": \"csrf\"}",
            headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 400 and "application/json" in (await r.json())["error"]["message"]
    # rotating a revoked key (or one that does not exist) is refused
    await api(proxy, "DELETE", f"/api/keys/{made['id']}")
    status, got = await api(proxy, "POST", f"/api/keys/{made['id']}/rotate")
    assert status == 400 and "revoked" in got["error"]["message"]
    status, got = await api(proxy, "POST", "/api/keys/key_nope/rotate")
    assert status == 404
    status, listed = await api(proxy, "GET", "/api/keys")
    assert [k["name"] for k in listed["keys"]] == ["a"] and listed["keys"][0]["revoked_at"]


async def test_rotate_keeps_the_key_and_retires_the_old_secret(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(**keyed(upstream))
    _, made = await api(proxy, "POST", "/api/keys", {"name": "rot", "models": ["keyed-*"]})
    status, rotated = await api(proxy, "POST", f"/api/keys/{made['id']}/rotate")
    assert status == 200 and rotated["key"] != made["key"]
    assert (rotated["id"], rotated["name"], rotated["models"]) == (made["id"], "rot",
                                                                   ["keyed-*"])
    old = sdk.openai(f"{proxy.url}/openai/v1", api_key=made["key"])
    with pytest.raises(openai.AuthenticationError):
        await old.chat.completions.create(model="keyed-model", messages=MSGS)
    new = sdk.openai(f"{proxy.url}/openai/v1", api_key=rotated["key"])
    await new.chat.completions.create(model="keyed-model", messages=MSGS)
    recs = await proxy.collector.wait_for(2)
    assert [r.consumer_key for r in recs] == [None, made["id"]]


async def test_the_keys_api_needs_the_admin_token(upstream: FakeUpstream,
                                                  start_proxy: StartProxy) -> None:
    proxy = await start_proxy(**keyed(upstream, admin={"token": "adm"}))
    status, _ = await api(proxy, "POST", "/api/keys", {"name": "a"})
    assert status == 401
    status, made = await api(proxy, "POST", "/api/keys", {"name": "a"},
                             {"Authorization": "Bearer adm"})
    assert status == 201
    # /api/me needs the key, not the admin token
    status, me = await api(proxy, "GET", "/api/me", headers={"x-api-key": made["key"]})
    assert status == 200 and me["key"]["id"] == made["id"]


async def test_api_me_answers_budgets_limits_and_today(
        tmp_path: Path, upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    # issued before the proxy starts (as the CLI does), so a budget can name its id
    backend = open_backend(str(tmp_path / "ledger.db"))
    await backend.open()
    admin = KeyAdmin(backend, await install_secret(backend))
    stored, secret = await admin.create(parse_spec(
        {"name": "carol", "tags": {"team": "ml"}, "limits": {"tokens_per_minute": 20000}}))
    await backend.aclose()
    kid = stored.key.id
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    proxy = await start_proxy(**keyed(upstream, budgets=[
        {"name": "carol-daily", "match": {"key": kid}, "limit_usd": 1, "window": "day",
         "action": "block"},
        {"name": "ml-monthly", "match": {"team": "ml"}, "limit_usd": 50, "window": "month",
         "action": "alert"},
        {"name": "by-name", "match": {"client": "carol"}, "limit_usd": 2, "window": "total",
         "action": "alert"},
        {"name": "openai-only", "match": {"upstream": "openai"}, "limit_usd": 9,
         "window": "day", "action": "alert"},  # not fixed by the key: not its budget
        {"name": "other", "match": {"team": "ops"}, "limit_usd": 9, "window": "day",
         "action": "alert"},
        {"name": "layers", "match": {"key": kid}, "windows": [  # one entry per window
            {"window": "day", "limit_usd": 3, "action": "block"},
            {"window": "month", "limit_usd": 30, "action": "alert"}]}]))
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key=secret)
    for _ in range(2):
        await client.chat.completions.create(model="keyed-model", messages=MSGS)
    await proxy.collector.wait_for(2)
    status, me = await api(proxy, "GET", "/api/me",
                           headers={"Authorization": f"Bearer {secret}"})
    assert status == 200
    assert me["key"] == {"id": kid, "name": "carol", "tags": {"team": "ml"}}
    assert me["limits"] == {"requests_per_minute": None, "tokens_per_minute": 20000,
                            "usd_per_minute": None}
    layers = {b["window"]: b for b in me["budgets"] if b["name"] == "layers"}
    assert set(layers) == {"day", "month"}
    assert layers["day"]["limit_usd"] == 3 and layers["month"]["limit_usd"] == 30
    assert layers["month"]["remaining_usd"] == pytest.approx(30 - 2 * COST, abs=1e-12)
    budgets = {b["name"]: b for b in me["budgets"] if b["name"] != "layers"}
    assert set(budgets) == {"carol-daily", "ml-monthly", "by-name"}
    day = budgets["carol-daily"]
    assert day["spend_usd"] == pytest.approx(2 * COST, abs=1e-12)  # 0.007: matched by key
    assert day["remaining_usd"] == pytest.approx(1 - 2 * COST, abs=1e-12)
    tomorrow = datetime.now(UTC).date().toordinal() + 1
    assert day["resets_at"] == \
        datetime.fromordinal(tomorrow).strftime("%Y-%m-%dT00:00:00Z")
    assert budgets["by-name"]["resets_at"] is None and day["window"] == "day"
    # today's calls from the ledger (written shortly after the records)
    me = await until(proxy, "/api/me", {"x-goog-api-key": secret},
                     lambda b: b["today"]["calls"] == 2)
    assert me["today"] == {"calls": 2, "cost_usd": pytest.approx(2 * COST, abs=1e-12)}
    for headers in ({}, {"Authorization": "Bearer tb-nope"}, {"x-api-key": LEGACY}):
        status, err = await api(proxy, "GET", "/api/me", headers=headers)
        assert status == 401 and err["error"]["message"]


async def test_consumer_keys_alone_guard_an_upstream_with_the_providers_key(
        upstream: FakeUpstream, start_proxy: StartProxy, sdk: Sdks) -> None:
    """No auth.client_keys at all: the proxy starts, a call without a consumer key is
    refused (401, nothing sent upstream), a call with one goes out with the provider's key."""
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    config = keyed(upstream)
    del config["auth"]
    proxy = await start_proxy(**config)
    anonymous = sdk.openai(f"{proxy.url}/openai/v1", api_key="sk-anything")
    with pytest.raises(openai.AuthenticationError):
        await anonymous.chat.completions.create(model="keyed-model", messages=MSGS)
    assert upstream.requests == []
    status, made = await api(proxy, "POST", "/api/keys", {"name": "solo"})
    assert status == 201
    client = sdk.openai(f"{proxy.url}/openai/v1", api_key=made["key"])
    reply = await client.chat.completions.create(model="keyed-model", messages=MSGS)
    assert reply.choices[0].message.content == "ok"
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    records = await proxy.collector.wait_for(2)
    assert [(r.outcome, r.status_code, r.client) for r in records] == [
        ("rejected", 401, None), ("ok", 200, "solo")]
