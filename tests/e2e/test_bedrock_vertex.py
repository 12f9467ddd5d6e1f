"""Bedrock through the proxy with boto3 (bearer-token auth, endpoint_url at the proxy), and
Vertex AI publisher paths: exact usage and cost, priced from the path's model id."""

from __future__ import annotations

import asyncio
import json
import ssl
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import state
from proxy.app import make_app
from tests.conftest import Collector, FakeUpstream, Proxy, Reply, make_config
from tests.e2e.test_ledger_metrics import rows

PAYLOADS = Path(__file__).parents[1] / "payloads"
M = Decimal(1_000_000)
MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"
STREAM = {"Content-Type": "application/vnd.amazon.eventstream"}


@pytest.fixture
async def tls_proxy(aiohttp_server: Any, tmp_path: Path, upstream: FakeUpstream,
                    estimator: Any, tls_files: tuple[Path, Path]) -> Proxy:
    """The proxy behind TLS, as `listen.tls_cert`/`tls_key` serve it: botocore sends a
    bearer token only to an https endpoint."""
    key, cert = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    config = make_config(tmp_path, upstream.url)
    collector = Collector()
    app = make_app(config, estimator=estimator, extra_sinks=(collector,))
    proxy = Proxy(await aiohttp_server(app, ssl=ctx), app, collector, config)
    proxy.cert = str(cert)  # type: ignore[attr-defined]  # what boto3 verifies against
    return proxy


def bedrock_client(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-test")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    return boto3.client("bedrock-runtime", region_name="us-east-1", verify=proxy.cert,
                        endpoint_url=f"{proxy.url}/bedrock")


async def done(proxy: Proxy, n: int) -> list[Any]:
    await proxy.collector.wait_for(n)
    await proxy.app[state.LEDGER].flush()
    return rows(proxy)


async def test_boto3_converse_and_converse_stream(upstream: FakeUpstream, tls_proxy: Proxy,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = tls_proxy
    path = f"/model/{MODEL}"
    upstream.on(f"{path}/converse", Reply([(PAYLOADS / "bedrock_converse" /
                                            "nonstream.json").read_bytes()]))
    body = (PAYLOADS / "bedrock_converse" / "stream.eventstream").read_bytes()
    upstream.on(f"{path}/converse-stream", Reply([body[i:i + 37] for i in
                                                  range(0, len(body), 37)], headers=STREAM))
    client = bedrock_client(proxy, monkeypatch)
    msgs = [{"role": "user", "content": [{"text": "Capital of France?"}]}]
    out = await asyncio.to_thread(client.converse, modelId=MODEL, messages=msgs)
    assert out["usage"]["inputTokens"] == 20

    def stream() -> list[str]:
        resp = client.converse_stream(modelId=MODEL, messages=msgs)
        return [next(iter(ev)) for ev in resp["stream"]]

    events = await asyncio.to_thread(stream)
    assert events[-1] == "metadata" and "contentBlockDelta" in events
    seen = [r for r in upstream.requests if "/converse" in r.path]
    assert all(r.headers["Authorization"] == "Bearer bedrock-api-key-test" for r in seen)
    got = {r["path"].rsplit("/", 1)[1]: r for r in await done(proxy, 2)}
    one, two = got["converse"], got["converse-stream"]
    assert one["operation"] == "converse" and one["model"] and one["dialect"] == "bedrock"
    assert one["request_model"] == MODEL
    # the row keeps the inference profile asked for, not the price list's regional.* name
    assert one["model"] == two["model"] == MODEL
    # Claude Sonnet 4 on Bedrock: $3 in, $0.30 cache read, $3.75 cache write, $15 out
    assert Decimal(repr(one["cost_usd"])) == (20 * 3 + 3 * 15) / M
    assert (two["input_tokens"], two["cache_read_tokens"], two["cache_write_tokens"],
            two["output_tokens"], two["stream"]) == (2512, 2000, 500, 5, 1)
    assert Decimal(repr(two["cost_usd"])) == (12 * 3 + 2000 * Decimal("0.3")
                                              + 500 * Decimal("3.75") + 5 * 15) / M
    assert two["usage_source"] == "reported" and two["outcome"] == "ok"


async def test_boto3_invoke_with_response_stream_for_claude(
        upstream: FakeUpstream, tls_proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = tls_proxy
    body = (PAYLOADS / "bedrock_invoke" / "stream_claude.eventstream").read_bytes()
    upstream.on(f"/model/{MODEL}/invoke-with-response-stream", Reply([body], headers=STREAM))
    client = bedrock_client(proxy, monkeypatch)

    def call() -> int:
        resp = client.invoke_model_with_response_stream(
            modelId=MODEL, body=json.dumps({"anthropic_version": "bedrock-2023-05-31",
                                            "max_tokens": 64, "messages": [
                                                {"role": "user", "content": "hi"}]}))
        return sum(1 for _ in resp["body"])

    assert await asyncio.to_thread(call) == 6
    (row,) = await done(proxy, 1)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (1030, 1000, 9)
    assert row["upstream_request_id"] == "msg_bdrk_01" and row["operation"] == "invoke"
    assert row["model"] == MODEL  # the inference profile asked for
    assert Decimal(repr(row["cost_usd"])) == (30 * 3 + 1000 * Decimal("0.3") + 9 * 15) / M


async def test_a_corrupt_frame_keeps_what_was_read(upstream: FakeUpstream,
                                                  proxy: Proxy) -> None:
    body = bytearray((PAYLOADS / "bedrock_converse" / "stream.eventstream").read_bytes())
    body[-3] ^= 0xFF  # the metadata frame's CRC no longer matches
    upstream.on(f"/model/{MODEL}/converse-stream", Reply([bytes(body)], headers=STREAM))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/bedrock/model/{MODEL}/converse-stream",
                          json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
                          headers={"Authorization": "Bearer k"}) as r:
            assert await r.read() == bytes(body)  # the client gets the bytes as sent
    (row,) = await done(proxy, 1)
    assert row["outcome"] == "ok" and row["usage_source"] in ("partial", "estimated")
    assert row["input_tokens"] is not None and row["estimator"]


async def test_vertex_claude_raw_predict_and_gemini(upstream: FakeUpstream,
                                                   proxy: Proxy) -> None:
    base = "/v1/projects/p1/locations/us-east5/publishers"
    claude = json.dumps({"id": "msg_vx1", "type": "message", "role": "assistant",
                         "model": "claude-sonnet-4-20250514",
                         "content": [{"type": "text", "text": "ok"}],
                         "usage": {"input_tokens": 100, "output_tokens": 20}}).encode()
    upstream.on(f"{base}/anthropic/models/claude-sonnet-4@20250514:rawPredict", Reply([claude]))
    upstream.on(f"{base}/google/models/gemini-2.5-flash:generateContent",
                Reply([(PAYLOADS / "gemini_generate" / "audio_input.json").read_bytes()]))
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer ya29.test"}) as s:
        async with s.post(f"{proxy.url}/vertex{base}/anthropic/models/"
                          f"claude-sonnet-4@20250514:rawPredict",
                          json={"anthropic_version": "vertex-2023-10-16", "max_tokens": 50,
                                "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
        async with s.post(f"{proxy.url}/vertex{base}/google/models/gemini-2.5-flash:"
                          f"generateContent", json={"contents": []}) as r:
            assert r.status == 200
    got = {r["operation"]: r for r in await done(proxy, 2)}
    c, g = got["messages"], got["generate_content"]
    assert c["request_model"] == "claude-sonnet-4@20250514" and c["dialect"] == "vertex"
    # Claude Sonnet 4 on Vertex: $3 in, $15 out
    assert Decimal(repr(c["cost_usd"])) == (100 * 3 + 20 * 15) / M
    # Gemini 2.5 Flash: 1,100 text/tool prompt at $0.30, 500 audio at $1.00, 100 out at $2.50
    assert Decimal(repr(g["cost_usd"])) == (1100 * Decimal("0.3") + 500 + 100 * Decimal("2.5")) / M


async def test_iam_credentials_make_the_proxy_sign_again(
        upstream: FakeUpstream, start_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A boto3 client with IAM credentials whose access key id is its client key: the proxy
    checks the key, signs the request again with its own credentials, and meters it."""
    import boto3
    import botocore.exceptions

    from tests.dialects.bedrock.test_sigv4 import botocore_signature

    creds = {"region": "us-east-1", "access_key_id": "AKIDPROXY", "secret_access_key": "s3cr3t"}
    proxy = await start_proxy(upstreams={"bedrock": {"url": upstream.url, "aws": creds}},
                              auth={"client_keys": {"team-a": "client-key-a"}})
    upstream.on(f"/model/{MODEL}/converse", Reply([(PAYLOADS / "bedrock_converse" /
                                                     "nonstream.json").read_bytes()]))
    for var in ("AWS_BEARER_TOKEN_BEDROCK", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)

    def client(key: str) -> Any:
        return boto3.client("bedrock-runtime", region_name="us-east-1",
                            endpoint_url=f"{proxy.url}/bedrock", aws_access_key_id=key,
                            aws_secret_access_key="anything")

    msgs = [{"role": "user", "content": [{"text": "hi"}]}]
    out = await asyncio.to_thread(client("client-key-a").converse, modelId=MODEL, messages=msgs)
    assert out["usage"]["outputTokens"] == 3
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        await asyncio.to_thread(client("wrong-key").converse, modelId=MODEL, messages=msgs)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    (seen,) = [r for r in upstream.requests if r.path.endswith("/converse")]
    auth = seen.headers["Authorization"]
    assert "Credential=AKIDPROXY/" in auth and "client-key-a" not in str(seen.headers)
    sent = {k: v for k, v in seen.headers.items() if k.lower() in
            [h for h in auth.split("SignedHeaders=")[1].split(",")[0].split(";")]}
    from proxy.dialects.bedrock.sigv4 import AwsCredentials

    expected = botocore_signature(AwsCredentials(**creds), "POST",
                                  f"{upstream.url}{seen.raw_path}", sent, seen.body,
                                  seen.headers["x-amz-date"])
    assert auth.endswith(f"Signature={expected}")
    rows_ = await done(proxy, 2)
    ok = next(r for r in rows_ if r["outcome"] == "ok")
    assert ok["client"] == "team-a" and ok["input_tokens"] == 20
