"""AWS Signature Version 4 for requests the proxy sends to Bedrock with IAM credentials
(`upstreams.<name>.aws`). The client's own signature names the proxy's host and cannot be
forwarded, so the proxy signs again. Pure: method, URL, headers and body in, headers out.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

__all__ = ["AwsCredentials", "sign"]


@dataclass(frozen=True)
class AwsCredentials:
    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    service: str = "bedrock"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = []
    for part in query.split("&") if query else ():
        k, _, v = part.partition("=")
        pairs.append((quote(k, safe="-_.~%"), quote(v, safe="-_.~%")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def sign(creds: AwsCredentials, method: str, url: str, headers: dict[str, str], body: bytes,
         now: datetime | None = None) -> dict[str, str]:
    """The headers to send: `headers` plus host, x-amz-date, the session token if any, and
    Authorization. Signed: host, content-type and x-amz-* (what the service checks; other
    headers may be changed on the way without breaking the signature)."""
    now = now or datetime.now(UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    parts = urlsplit(url)
    payload_hash = hashlib.sha256(body).hexdigest()
    out = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "host")
           and not k.lower().startswith("x-amz-")}
    out["host"] = parts.netloc
    out["x-amz-date"] = amz_date
    if creds.session_token:
        out["x-amz-security-token"] = creds.session_token
    canon = {k.lower(): " ".join(str(v).split()) for k, v in out.items()
             if k.lower() in ("host", "content-type") or k.lower().startswith("x-amz-")}
    signed = ";".join(sorted(canon))
    # AWS (non-S3) canonical URIs are the path with each segment URI-encoded once more
    path = quote(parts.path or "/", safe="/-_.~")
    request = "\n".join([method.upper(), path, _canonical_query(parts.query),
                         "".join(f"{k}:{canon[k]}\n" for k in sorted(canon)), signed,
                         payload_hash])
    scope = f"{day}/{creds.region}/{creds.service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{creds.secret_access_key}".encode(), day),
                            creds.region), creds.service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    return out
