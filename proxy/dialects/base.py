"""The small interface every provider API parser implements, and the values it returns.

A Dialect reads a request body (model, stream flag, end user) and a response, either whole
(`from_json`) or as frames fed to a per-call StreamState. Sans-IO: values in, values out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, ClassVar, Protocol

from proxy.framing import NdjsonFramer, SseFramer
from proxy.quota import Quota
from proxy.usage import Usage
from proxy.value import value

__all__ = ["NOTHING_OBSERVED", "BaseStream", "BatchLine", "BodyFilter", "Dialect", "DialectBase",
           "Extract", "FrameText", "Injector", "Match", "Observation", "Provider", "RequestInfo",
           "Screen", "ScreenScan", "Skipped", "SocketDialect", "SocketState", "StreamAcc",
           "StreamState", "TextBuffer", "error_text", "loads", "read_skipped"]

MAX_TEXT_CHARS = 1 << 20  # visible output kept for estimation; beyond it we count chars only


def loads(data: bytes | str) -> Any:
    """`json.loads`, without its encoding sniff for the usual body: bytes opening with `{`
    or `[` then a non-zero byte are UTF-8 to that sniff too (json.detect_encoding), decoded
    as json.loads decodes them."""
    if type(data) is bytes and data[:1] in _OPENERS and data[1:2] != b"\x00":
        return json.loads(data.decode("utf-8", "surrogatepass"))
    return json.loads(data)


_OPENERS = (b"{", b"[")


@value
class RequestInfo:
    """What the request says, read once per call for every consumer (injection, budgets,
    estimation, record)."""

    model: str | None = None
    stream: bool = False
    end_user: str | None = None
    max_tokens: int | None = None
    service_tier: str | None = None  # requested; never what is priced
    session: str | None = None  # a session the client's own metadata names (Claude Code)


@value
class Match:
    """What a provider's route table says of one request path."""

    operation: str
    parser: str | None  # key into DIALECTS
    path_model: str | None = None  # model named in the URL (Gemini, Azure, Bedrock, Vertex)
    path_stream: bool = False  # the URL itself asks for a stream
    batch_id: str | None = None  # a batch-results download: the file or batch id


@value
class BatchLine:
    """One result line of a downloaded batch file: one call, billed at the batch rate."""

    line_id: str  # custom_id / key: unique within the batch
    observation: Observation


@value
class Observation:
    """What a response told us. `usage` None = the provider reported nothing."""

    usage: Usage | None = None
    usage_raw: Any = None
    response_model: str | None = None
    upstream_request_id: str | None = None
    status: str = "unknown"  # complete | incomplete | error | unknown | pending
    error: str | None = None
    text: TextBuffer | None = None  # visible output, read only when an estimate needs it
    provider_cost_usd: Decimal | None = None
    parse_errors: int = 0
    batch_lines: tuple[BatchLine, ...] = ()  # a batch-results download: one per result
    # The proxy measured the billed quantity itself, exactly as billed (audio seconds of an
    # upload, characters of a speech input): `usage_source` `measured`.
    measured: bool = False
    # How the dialect estimated a side the provider did not report (its usage then counts
    # as estimated, under this estimator name); None: reported, or left to the estimator.
    input_estimator: str | None = None
    output_estimator: str | None = None
    # A background response seen finished (OpenAI Responses): its usage, recorded once, as
    # a row of its own linked by the response id. `status` "pending": a background
    # response not finished yet, whose usage is recorded when it is seen finished.
    background: Observation | None = None
    operation: str | None = None  # a socket's result: its row's operation (realtime, ...)

    @property
    def output_text(self) -> str:
        return self.text.text() if self.text is not None else ""

    @property
    def output_chars_dropped(self) -> int:
        return self.text.dropped if self.text is not None else 0


NOTHING_OBSERVED = Observation()  # a call not answered (yet): frozen, so shared


# Reads one parsed frame's visible text into the buffer.
Extract = Callable[[dict[str, Any], "TextBuffer"], None]
# Reads one frame (event name or None, data) of a stream's visible text into the buffer.
FrameText = Callable[[str | None, bytes, "TextBuffer"], None]


@value
class Skipped:
    """Whole frames the meter passed over unread (nothing in them could matter but their
    text, and that only for an estimate): kept as bytes, read by `read_skipped()` if an
    estimate is ever needed."""

    data: bytes
    sse: bool  # SSE events; else one JSON document a line
    frame_text: FrameText  # the stream's reader of one frame's text


def read_skipped(skipped: Skipped, out: TextBuffer) -> None:
    """The text of skipped frames, into `out`: frame them now, read each one's text."""
    frame_text = skipped.frame_text
    if skipped.sse:
        events = SseFramer()
        for ev in [*events.feed(skipped.data), *events.flush()]:
            frame_text(ev.name, ev.data, out)
    else:
        lines = NdjsonFramer()
        for line in [*lines.feed(skipped.data), *lines.flush()]:
            frame_text(None, line, out)


class TextBuffer:
    """Visible output text, capped; what spills over is counted, not kept.

    `add_raw()` keeps a frame's bytes and the function that reads its text, and
    `add_skipped()` whole frames nobody read, so plain delta frames are only JSON-parsed if
    an estimate is ever needed (the provider's usage usually arrives and they are dropped
    unread). That keeps parsing off the per-chunk path.
    """

    __slots__ = ("parts", "size", "dropped")

    def __init__(self) -> None:
        self.parts: list[str | tuple[bytes, Extract] | Skipped] = []
        self.size = 0
        self.dropped = 0

    def add(self, text: object) -> None:
        if not isinstance(text, str) or not text:
            return
        if self.size + len(text) > MAX_TEXT_CHARS:
            self.dropped += len(text)
            return
        self.parts.append(text)
        self.size += len(text)

    def add_raw(self, data: bytes, extract: Extract) -> None:
        if self.size + len(data) > MAX_TEXT_CHARS:
            _extract(data, extract, self)
            return
        self.parts.append((data, extract))
        self.size += len(data)

    def add_skipped(self, skipped: Skipped) -> None:
        """Whole frames nobody needed to read yet; read only if the text is asked for."""
        if self.size + len(skipped.data) > MAX_TEXT_CHARS:
            read_skipped(skipped, self)
            return
        self.parts.append(skipped)
        self.size += len(skipped.data)

    def text(self) -> str:
        while not all(type(p) is str for p in self.parts):
            # skipped frames resolve into raw frames, raw frames into text
            parts, self.parts, self.size = self.parts, [], 0
            for p in parts:
                if isinstance(p, str):
                    self.add(p)
                elif isinstance(p, Skipped):
                    read_skipped(p, self)
                else:
                    _extract(p[0], p[1], self)
        return "".join(p for p in self.parts if isinstance(p, str))


def _extract(data: bytes, extract: Extract, out: TextBuffer) -> None:
    try:
        obj = loads(data)
    except ValueError:
        return
    if isinstance(obj, dict):
        extract(obj, out)


class Screen:
    """Finds where bytes may start to matter (usage, an error, an ending) by literal search.

    Bytes matter where they hold one of the `plain` needles, or a match of a `keyed`
    pattern. A keyed pattern is only run when its needle occurs more often than its
    harmless forms do (`"usage"` beyond `"usage":null`), so the usual stream is screened by
    a few C-speed `find`/`count` calls over many chunks at once. A false "matters" only
    costs a parse, never a wrong count.
    """

    __slots__ = ("_plain", "_keyed")

    def __init__(self, plain: tuple[bytes, ...] = (),
                 keyed: tuple[tuple[bytes, tuple[bytes, ...], bytes], ...] = ()) -> None:
        self._plain = plain
        self._keyed = tuple((needle, harmless, re.compile(pattern))
                            for needle, harmless, pattern in keyed)

    def over(self, buf: bytes) -> ScreenScan:
        return ScreenScan(buf, self._plain, self._keyed)

    def first(self, buf: bytes, start: int = 0) -> int:
        """Where the first thing that may matter starts in `buf[start:]`, or -1."""
        return self.over(buf).next(start)


class ScreenScan:
    """A Screen over one buffer, asked again and again as the reader moves on: each needle
    or pattern is searched again only once the reader has passed its last hit, so a buffer
    in which every frame matters is still scanned in linear time."""

    __slots__ = ("_searches", "_hits")

    def __init__(self, buf: bytes, plain: tuple[bytes, ...],
                 keyed: tuple[tuple[bytes, tuple[bytes, ...], re.Pattern[bytes]], ...]) -> None:
        searches: list[Callable[[int], int]] = [partial(buf.find, needle) for needle in plain]
        count = buf.count
        for needle, harmless, pattern in keyed:
            # every occurrence a harmless form: nothing for the pattern to find in `buf`
            if count(needle) > sum(count(h) for h in harmless):
                searches.append(partial(_match_at, pattern, buf))
        self._searches = searches
        self._hits = [-2] * len(searches)  # -2: not searched yet; -1: no more hits

    def next(self, pos: int) -> int:
        """Where the first thing that may matter starts at or after `pos`, or -1."""
        best = -1
        hits = self._hits
        for i, hit in enumerate(hits):
            if hit == -2 or 0 <= hit < pos:
                hit = hits[i] = self._searches[i](pos)
            if hit >= 0 and (best < 0 or hit < best):
                best = hit
        return best


def _match_at(pattern: re.Pattern[bytes], buf: bytes, pos: int) -> int:
    m = pattern.search(buf, pos)
    return m.start() if m is not None else -1


class StreamState(Protocol):
    """Per-call stream parser. `quiet` (a Screen, or None) finds every chunk that may
    matter; once `ready()`, a chunk of whole frames it passes over is not framed at all,
    only kept for `frame_text()` in case an estimate is needed."""

    quiet: ClassVar[Screen | None]
    acc: StreamAcc

    def on_frame(self, name: str | None, data: bytes) -> None: ...
    def ready(self) -> bool: ...
    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None: ...
    def result(self) -> Observation: ...


class SocketState(Protocol):
    """Per-socket parser of a WebSocket API (OpenAI Realtime, Gemini Live). Fed every
    whole message as it passed (text as `str`, binary as `bytes`), it returns the
    responses each message finished (one row each: usage, ids, model, status, and the
    row's `operation`); `close()` returns what was still running when the socket closed.
    Sans-IO, and it never raises on a message it cannot read (it counts it). Optional, read
    when present: `progress() -> dict[str, Observation]` (the responses running now, by id,
    for the live feed) and `session_id` (the provider's session id, the rows' `session`
    unless the client sent X-Meter-Session)."""

    def on_client(self, frame: str | bytes) -> list[Observation]: ...
    def on_server(self, frame: str | bytes) -> list[Observation]: ...
    def close(self) -> list[Observation]: ...


class SocketDialect(Protocol):
    """A WebSocket API's parser factory, registered by its provider home
    (`Provider.socket()`). `refusal()` is the provider's own error event answering a
    client message that would start a billed response (the budget refused it), or None
    when the message starts none (it is forwarded)."""

    @property
    def name(self) -> str: ...

    def new_socket(self, query: Mapping[str, str], path_model: str | None) -> SocketState: ...
    def refusal(self, frame: str | bytes, message: str,
                code: str = "budget_exceeded") -> str | None: ...


class DialectBase:
    """Defaults for a parser: framing chosen by content type, and an input estimate that
    counts every text under the request's `text_keys` (plus a fixed overhead)."""

    family: ClassVar[str] = "openai"
    estimate_factor: ClassVar[float] = 1.0  # tiktoken counts scaled for other tokenizers
    framing: ClassVar[str] = "auto"
    text_keys: ClassVar[tuple[str, ...]] = ()
    text_overhead: ClassVar[int] = 0
    free: ClassVar[bool] = False  # not consumption (count-tokens): priced at 0
    has_output: ClassVar[bool] = True  # generates output to estimate when unreported
    reads_body: ClassVar[bool] = False  # the request is not JSON: `read_body()` reads it

    def read_body(self, body: bytes, content_type: str | None) -> Any:
        """A request body that is not JSON (multipart uploads), as the dialect's doc."""
        return None

    def from_json(self, doc: Any) -> Observation:
        raise NotImplementedError

    def from_body(self, body: bytes, content_type: str | None) -> Observation:
        """A whole (non-streaming) response body: JSON unless the dialect says otherwise."""
        return self.from_json(loads(body))

    def settle(self, doc: Any, obs: Observation) -> Observation:
        """The observation completed from the request, where the provider bills what was
        sent (audio seconds, characters) and the response does not say it: unchanged here."""
        return obs

    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int:
        from proxy.estimate import strings

        return sum(count(t) for t in strings([doc.get(k) for k in self.text_keys])) \
            + self.text_overhead


class Dialect(Protocol):
    """One provider API's parser: request, whole response, stream, and input estimate."""

    @property
    def name(self) -> str: ...  # key in DIALECTS: "<provider>.<api>"
    family: ClassVar[str]  # tokenizer family for estimates ("openai", "anthropic", ...)
    estimate_factor: ClassVar[float]
    framing: ClassVar[str]  # "auto" (by content type) or "ndjson" (batch files)
    free: ClassVar[bool]
    has_output: ClassVar[bool]
    reads_body: ClassVar[bool]

    def request_info(self, doc: Any) -> RequestInfo: ...
    def read_body(self, body: bytes, content_type: str | None) -> Any: ...
    def from_json(self, doc: Any) -> Observation: ...
    def from_body(self, body: bytes, content_type: str | None) -> Observation: ...
    def settle(self, doc: Any, obs: Observation) -> Observation: ...
    def new_stream(self) -> StreamState: ...
    def estimate_input(self, doc: dict[str, Any], count: Callable[[str], int],
                       model: str | None) -> int: ...


class BodyFilter(Protocol):
    """A rewrite of the client's copy of a response body, chunk by chunk."""

    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class Injector(Protocol):
    """Asks a stream for its usage (`inject` gives the new body, or None) and hides the
    answer from a client that did not ask (`stripper`)."""

    def inject(self, body: bytes, doc: Any) -> bytes | None: ...
    def stripper(self) -> BodyFilter: ...


class Provider:
    """Everything about one provider that is not a response parser: its built-in
    upstreams, routes, how the proxy supplies its key or signs for it, the error body its
    SDK expects, stream-usage injection and its pricing provider. Each provider home
    subclasses this and overrides what it needs."""

    name: ClassVar[str]  # the upstream `dialect` in config
    builtins: ClassVar[dict[str, dict[str, Any]]] = {}
    sdk_headers: ClassVar[tuple[str, ...]] = ()  # headers only its SDK sends
    inject_by_default: ClassVar[bool] = False
    price_providers: ClassVar[dict[str, str]] = {}  # upstream name -> genai-prices id
    price_provider: ClassVar[str | None] = None  # otherwise (None: any that knows the model)
    # The row's model is the model id the caller asked for, not the price list's name for
    # it (Bedrock: the list's `regional.anthropic...` is no id a caller can use).
    model_as_requested: ClassVar[bool] = False

    def match(self, method: str, path: str) -> Match | None:
        raise NotImplementedError

    def socket(self, path: str) -> SocketDialect | None:
        """The parser of a WebSocket opened on `path`, or None (relayed, metered as one
        call without usage)."""
        return None

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def error(self, status: int, kind: str, message: str,
              extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """(body, headers) of a refusal by the proxy, in the shape the SDK reads."""
        return {"error": {"message": message, "type": kind, "code": kind, "param": None,
                          **extra}}, {}

    def injector(self, parser: str | None) -> Injector | None:
        return None

    def tags(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Attribution tags the provider's clients send in their own headers."""
        return {}

    def response_filter(self, method: str, path: str, upstream_url: str,
                        public_url: Callable[[], str]) -> BodyFilter | None:
        """A feed()/flush() filter for the client's copy of the response, or None.
        `public_url()` is where clients reach this upstream through the proxy."""
        return None

    def sign(self, upstream: Any, method: str, url: str, headers: dict[str, str],
             body: bytes) -> dict[str, str]:
        """The outbound headers, signed again where the provider needs it."""
        return headers

    def quota(self, headers: Mapping[str, str], now: float) -> Quota | None:
        """The rate-limit and quota headers of a response (`now`: when it arrived), or None
        when the provider sends none we read."""
        return None


@dataclass
class StreamAcc:
    """Mutable fields most stream states share; `build()` freezes them."""

    usage: Usage | None = None
    usage_raw: Any = None
    model: str | None = None
    request_id: str | None = None
    status: str = "unknown"
    error: str | None = None
    cost: Decimal | None = None
    text: TextBuffer = field(default_factory=TextBuffer)

    def build(self, parse_errors: int = 0) -> Observation:
        return Observation(self.usage, self.usage_raw, self.model, self.request_id, self.status,
                           self.error, self.text, self.cost, parse_errors)


class BaseStream:
    """What the dialects' stream states share: the accumulator, JSON reading that counts a
    bad frame instead of raising, and "no terminal event seen" meaning incomplete. By
    default no chunk is screened out (`quiet` None) and a frame has no text to estimate
    from; a dialect whose deltas carry text overrides both."""

    __slots__ = ("acc", "errors")
    quiet: ClassVar[Screen | None] = None

    def __init__(self) -> None:
        self.acc = StreamAcc()
        self.errors = 0

    def ready(self) -> bool:
        return True

    def frame_text(self, name: str | None, data: bytes, out: TextBuffer) -> None:
        return None

    def _load(self, data: bytes) -> Any:
        """The frame's JSON, or None (counted) when it is not JSON."""
        try:
            return loads(data)
        except ValueError:
            self.errors += 1
            return None

    def result(self) -> Observation:
        if self.acc.status == "unknown":
            self.acc.status = "incomplete"
        return self.acc.build(self.errors)


def error_text(err: Any) -> str:
    """A short error reason: type and code only; provider messages may echo the prompt."""
    if isinstance(err, dict):
        parts = [str(err[k]) for k in ("type", "code", "status") if err.get(k) not in (None, "")]
        return ":".join(parts)[:120] or "error"
    if isinstance(err, str):
        return "error"
    return "error"
