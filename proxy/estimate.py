"""Token estimates for calls whose provider reported nothing (or only half).

Vocabularies ship inside the package (`proxy/data/*.tiktoken.gz`, sha256-checked) and are
loaded off the event loop, by `Estimator.load()`; nothing is ever downloaded. The fallback
order is o200k_base -> cl100k_base -> characters/4, and every estimate says which one
produced it. Non-OpenAI tokenizers are approximated with a per-provider factor.

A served proxy loads only o200k_base at start: cl100k_base (22 MiB resident) serves only
the older models (gpt-4, gpt-3.5, ada embeddings), so it is loaded the first time one of
them needs an estimate (`on_demand`, which the app runs in a thread); until it is there,
those estimates use o200k_base and say so.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.value import value

if TYPE_CHECKING:
    import tiktoken

    from proxy.dialects.base import Dialect

__all__ = ["Estimate", "Estimator", "strings"]

log = logging.getLogger("tokenbooth.estimate")

DATA_DIR = Path(__file__).parent / "data"
_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_PATTERNS = {
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
    "o200k_base": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""", r"""\s+""",
    ]),
}
_SPECIAL = {
    "cl100k_base": {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                    "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                    "<|endofprompt|>": 100276},
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}
_CL100K_PREFIXES = ("gpt-4-", "gpt-3.5", "gpt-35", "text-embedding-", "davinci", "babbage")
_ORDER = ("o200k_base", "cl100k_base")
_ORDER_CL100K = ("cl100k_base", "o200k_base")
SHORT_CHARS = 12  # texts this short (a message's role, a name) are counted once, remembered
_SHORT_KEPT = 4096  # at most this many of them per encoding
# Longer texts (a system prompt, the earlier turns an agent resends with every call) are
# remembered by their hash only, never the text: an agent loop's conversation is counted
# once per new message, not once per turn. At most this many counts per encoding; when
# full, they are forgotten at once and counting starts over.
_SEEN_KEPT = 8192


@value
class Estimate:
    tokens: int
    estimator: str  # e.g. "tiktoken:o200k_base" or "tiktoken:o200k_base*1.2" or "chars/4"


def _load_encoding(name: str, data_dir: Path) -> tiktoken.Encoding:
    import tiktoken

    raw = gzip.decompress((data_dir / f"{name}.tiktoken.gz").read_bytes())
    if hashlib.sha256(raw).hexdigest() != _SHA256[name]:
        raise ValueError(f"{name}: vocabulary file fails its sha256 check")
    ranks = {base64.b64decode(tok): int(rank)
             for tok, rank in (line.split() for line in io.BytesIO(raw) if line.strip())}
    del raw
    enc = tiktoken.Encoding(name=name, pat_str=_PATTERNS[name], mergeable_ranks=ranks,
                            special_tokens=_SPECIAL[name])
    # The Rust core keeps its own copy; the Python dict (~20 MB for o200k) only serves
    # pickling, which we never do. Dropping it keeps the proxy's resident memory down.
    enc._mergeable_ranks = {}
    return enc


class Estimator:
    """Counts tokens with the best encoding available; `load()` is blocking (run in a thread)."""

    def __init__(self, factors: dict[str, float] | None = None,
                 data_dir: Path = DATA_DIR, encodings: tuple[str, ...] = ("o200k_base",
                                                                          "cl100k_base")) -> None:
        # config `estimation.factors` by family; otherwise each dialect's own default
        self.factors = dict(factors or {})
        self._data_dir = data_dir
        self._wanted = encodings
        self._enc: dict[str, tiktoken.Encoding] = {}
        self._counters: dict[str, _Counter] = {}  # one per encoding, made on first use
        self.loaded = False
        # Wanted encodings not loaded yet: asked for once, through `on_demand`, by the
        # first estimate that prefers one of them (it then uses the next in order).
        self._deferred: set[str] = set()
        self.on_demand: Callable[[str], None] | None = None

    def load(self, names: tuple[str, ...] | None = None) -> None:
        """Load `names` (default: every wanted encoding); the other wanted ones wait for
        `on_demand`. Blocking: run it in a thread."""
        names = self._wanted if names is None else tuple(n for n in names if n in self._wanted)
        self._deferred = {n for n in self._wanted if n not in names and n not in self._enc}
        for name in names:
            self.load_one(name)
        self.loaded = True

    def load_one(self, name: str) -> None:
        """Load one vocabulary (blocking); a missing or corrupt one degrades, never fails."""
        try:
            self._enc[name] = _load_encoding(name, self._data_dir)
        except Exception as exc:
            log.warning("tokenizer %s unavailable (%s); falling back", name, exc)
        self._deferred.discard(name)

    def _counter(self, model: str | None) -> tuple[str, Callable[[str], int]]:
        order = _ORDER_CL100K if model and model.lower().startswith(_CL100K_PREFIXES) \
            else _ORDER
        for name in order:
            enc = self._enc.get(name)
            if enc is None and name in self._deferred:
                self._ask(name)
            if enc is not None:
                counter = self._counters.get(name)
                if counter is None or counter.enc is not enc:
                    counter = self._counters[name] = _Counter(name, enc)
                return counter.label, counter
        return "chars/4", _chars4

    def _ask(self, name: str) -> None:
        """A deferred vocabulary is wanted: ask for it once (a failed ask is logged; the
        estimate goes on with the next encoding)."""
        self._deferred.discard(name)
        if self.on_demand is None:
            return
        try:
            self.on_demand(name)
        except Exception:
            log.exception("tokenizer %s could not be loaded on demand", name)

    def count_text(self, text: str, model: str | None = None) -> Estimate:
        name, count = self._counter(model)
        return Estimate(count(text) if text else 0, name)

    def _scaled(self, tokens: int, name: str, dialect: Dialect) -> Estimate:
        """Non-OpenAI tokenizers approximated: the family's factor (config, else the
        dialect's `estimate_factor`)."""
        factor = self.factors.get(dialect.family, dialect.estimate_factor)
        if factor == 1.0:
            return Estimate(tokens, name)
        return Estimate(math.ceil(tokens * factor), f"{name}*{factor:g}")

    def output(self, text: str, model: str | None, dialect: Dialect,
               extra_chars: int = 0) -> Estimate:
        est = self.count_text(text, model)
        tokens = est.tokens + (math.ceil(extra_chars / 4) if extra_chars else 0)
        return self._scaled(tokens, est.estimator, dialect)

    def input(self, dialect: Dialect, doc: Any, model: str | None) -> Estimate:
        """Input estimate from a request body, by the API's own shape (the dialect's)."""
        name, count = self._counter(model)
        tokens = dialect.estimate_input(doc, count, model) if isinstance(doc, dict) else 0
        return self._scaled(tokens, name, dialect)


SAMPLE_CHARS = 1 << 20  # longer texts: tokens counted in slices of this size


def _chars4(text: str) -> int:
    return math.ceil(len(text) / 4)


class _Counter:
    """One encoding's exact count. Every message of a conversation repeats its role
    ("user", "assistant"): a text of at most SHORT_CHARS characters is counted once and
    its count remembered (bounded), so a 40-message request does not call the tokenizer
    40 times for the same few words. Longer texts come back too (an agent resends its
    whole conversation each turn): their counts are remembered under the text's hash
    (a 64-bit keyed SipHash: a wrong count from a collision is not a practical concern
    for an estimate), bounded, so no text is kept."""

    __slots__ = ("_seen", "_short", "enc", "label")

    def __init__(self, name: str, enc: tiktoken.Encoding) -> None:
        self.enc = enc
        self.label = f"tiktoken:{name}"
        self._short: dict[str, int] = {}
        self._seen: dict[int, int] = {}

    def __call__(self, text: str) -> int:
        if len(text) > SHORT_CHARS:
            key = hash(text)
            n = self._seen.get(key)
            if n is None:
                n = _count_tokens(self.enc, text)
                if len(self._seen) >= _SEEN_KEPT:
                    self._seen.clear()
                self._seen[key] = n
            return n
        n = self._short.get(text)
        if n is None:
            n = _count_tokens(self.enc, text)
            if len(self._short) < _SHORT_KEPT:
                self._short[text] = n
        return n


def _count_tokens(enc: tiktoken.Encoding, text: str) -> int:
    """Exact count, in slices so a huge text never becomes one huge token list (a 30 MiB
    prompt once cost ~290 MiB to estimate). A slice boundary may split one token in two:
    at most one token per MiB more than a whole count, and the result is an estimate."""
    if len(text) <= SAMPLE_CHARS:
        return len(enc.encode(text, disallowed_special=()))
    return sum(len(enc.encode(text[i:i + SAMPLE_CHARS], disallowed_special=()))
               for i in range(0, len(text), SAMPLE_CHARS))


def strings(obj: object) -> list[str]:
    """Every text value in a nested request body (content, text, prompt...), no keys."""
    out: list[str] = []
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, str):
            out.append(cur)
        elif isinstance(cur, list):
            stack.extend(cur)
        elif isinstance(cur, dict):
            for k, v in cur.items():
                if k in ("type", "role", "cache_control", "inlineData", "image_url", "source",
                         "mimeType", "data"):
                    continue
                stack.append(v)
    return out
