"""Amazon Bedrock runtime: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream under `/model/{modelId}/...`. The model id (possibly an
inference profile such as `us.anthropic...`, or an ARN) is URL-encoded in the path; rows
keep it as their model (the price list's name for it, `regional.anthropic...`, is not one).

Bedrock API keys (`Authorization: Bearer`) pass through. IAM-signed requests cannot survive
the change of host, so with `upstreams.<name>.aws` set the proxy signs them again
(`proxy.dialects.bedrock.sigv4`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import unquote

from proxy.dialects.base import Match, Provider
from proxy.dialects.bedrock import sigv4

__all__ = ["BedrockProvider"]

_ROUTE = re.compile(r"(?:^|/)model/([^/]+)/(converse|converse-stream|invoke|"
                    r"invoke-with-response-stream)$")
# The event-stream content type, not the path, tells a stream from a whole body.
_OPS = {"converse": ("converse", "bedrock.converse"),
        "converse-stream": ("converse", "bedrock.converse"),
        "invoke": ("invoke", "bedrock.invoke"),
        "invoke-with-response-stream": ("invoke", "bedrock.invoke")}
_COUNT = re.compile(r"(?:^|/)model/([^/]+)/count-tokens$")
_ERRORS = {400: "ValidationException", 401: "AccessDeniedException",
           403: "AccessDeniedException", 404: "ResourceNotFoundException",
           413: "ValidationException", 429: "ThrottlingException",
           502: "ServiceUnavailableException", 504: "ModelTimeoutException"}


class BedrockProvider(Provider):
    name: ClassVar[str] = "bedrock"
    sdk_headers: ClassVar[tuple[str, ...]] = ("x-amz-date", "x-amz-security-token")
    builtins: ClassVar[dict[str, dict[str, Any]]] = {
        "bedrock": {"url": "https://bedrock-runtime.us-east-1.amazonaws.com"}}
    price_provider: ClassVar[str | None] = "aws"
    model_as_requested: ClassVar[bool] = True

    def match(self, method: str, path: str) -> Match | None:
        if method != "POST":
            return None
        m = _ROUTE.search(path)
        if m is not None:
            op, parser = _OPS[m.group(2)]
            return Match(op, parser, unquote(m.group(1)))
        m = _COUNT.search(path)
        if m is not None:
            return Match("count_tokens", "free.count_tokens", unquote(m.group(1)))
        return None

    def sign(self, upstream: Any, method: str, url: str, headers: dict[str, str],
             body: bytes) -> dict[str, str]:
        if upstream.aws is None:
            return headers  # a Bedrock API key (bearer) passes through as sent
        return sigv4.sign(upstream.aws, method, url, dict(headers), body)

    def error(self, status: int, kind: str, message: str,
              extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """boto3 reads `x-amzn-ErrorType` and `message`."""
        name = _ERRORS.get(status, "InternalServerException")
        return {"message": message, "reason": kind, **extra}, {"x-amzn-ErrorType": name}
