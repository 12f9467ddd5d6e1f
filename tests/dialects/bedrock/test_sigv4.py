"""SigV4 signatures equal botocore's for the same request."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.dialects.bedrock.sigv4 import AwsCredentials, sign


def botocore_signature(creds: AwsCredentials, method: str, url: str, headers: dict[str, str],
                       body: bytes, amz_date: str) -> str:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = SigV4Auth(Credentials(creds.access_key_id, creds.secret_access_key,
                                 creds.session_token), "bedrock", creds.region)
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    req.context["timestamp"] = amz_date
    signature: str = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    return signature


@pytest.mark.parametrize("url", [
    "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-"
    "20250514-v1:0/converse",
    "https://bedrock-runtime.eu-west-1.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aeu-west-1"
    "%3A1%3Ainference-profile%2Fx/invoke?b=2&a=1%202",
])
@pytest.mark.parametrize("token", [None, "session-token"])
def test_signature_equals_botocore(url: str, token: str | None) -> None:
    creds = AwsCredentials("us-east-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token)
    body = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
    out = sign(creds, "POST", url, {"Content-Type": "application/json",
                                    "Authorization": "Bearer client-key",
                                    "X-Amz-Date": "stale"}, body,
               datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC))
    assert out["x-amz-date"] == "20261130T120000Z" and "X-Amz-Date" not in out
    assert (out.get("x-amz-security-token") == token)
    sent = {k: v for k, v in out.items() if k != "Authorization"}
    expected = botocore_signature(creds, "POST", url, sent, body, "20261130T120000Z")
    assert out["Authorization"].endswith(f"Signature={expected}")
    assert out["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-east-1/bedrock/aws4_request")
