"""The upstream leg of a forwarded call: a lean HTTP/1.1 client over asyncio protocols.

aiohttp's `ClientSession.request` builds a request object, a writer, a response object and a
stream reader for every call, resolves cookies, auto headers and traces, and was the largest
single cost of a forwarded call (about a third of the bare proxy's own Python per call). A
proxy needs little of that: the request is bytes already read whole, and the response body
only has to be handed on chunk by chunk. Here each pooled connection is one protocol whose
response parser is llhttp (through `httptools`: chunked bodies, lengths, keep-alive and
malformed input are the C parser's job, not ours), and a call costs one write and one
`Body` that yields what arrived.

What stays as it was with aiohttp, so that nothing a client or a test sees changes:
- The request line's target is yarl's encoding of the URL (what aiohttp sends), `Host` is
  added unless the headers carry one (a signed request's), `Accept: */*` when the client sent
  no Accept, and `Content-Length` (0 for a body-less POST-like method).
- Failures raise aiohttp's own exceptions (`ClientConnectorError` with the OS error,
  `ServerDisconnectedError`, `ClientPayloadError`, `ClientOSError`, `ClientResponseError`
  for an unparsable answer), so the endings table reads them unchanged.
- Connections: at most `limit` in use (0: no bound), idle ones kept `keepalive_seconds`.
  A call never retries by itself (a POST cannot be known to be unprocessed).

Not handled here (the caller uses its aiohttp session for them): HEAD (llhttp cannot be told a
response has no body), URLs with user info, schemes other than http and https, WebSocket
upgrades.
"""

from proxy.upstream.connection import Body, UpstreamResponse
from proxy.upstream.pool import UpstreamPool, handles

__all__ = ["Body", "UpstreamPool", "UpstreamResponse", "handles"]
