"""The live feed's view of a call in flight, kept by the Forwarder: the LiveCall a call
shows from its start (the model it names, its tags, what prices its running cost) and its
running counts as a stream goes: the usage the provider has reported so far, else output
tokens estimated from the text so far (chars/4); each update goes to the recorder, which
prices it as the final record will be. The Forwarder contains any failure here: it never
touches the call.
"""

from __future__ import annotations

from dataclasses import replace

from proxy.dialects import Observation
from proxy.dialects.base import Dialect
from proxy.record import CallFacts, LiveCall, iso_utc
from proxy.recorder import Recorder
from proxy.routing import Route
from proxy.usage import Usage

__all__ = ["live_call", "update_live"]


def live_call(facts: CallFacts, route: Route, dialect: Dialect | None,
              request_bytes: int) -> LiveCall:
    """The call as the live feed shows it from the start (with the model it names)."""
    info, tags = facts.request_info, facts.tags
    return LiveCall(facts.call_id, iso_utc(facts.started), facts.upstream, route.operation,
                    False, tags.get("agent"), tags.get("session"), tags.get("run"),
                    (info.model if info is not None else None) or route.path_model,
                    tags=tags, price_provider=route.price_provider,
                    free=route.upstream.free or (dialect is not None and dialect.free),
                    dialect=dialect, request_doc=facts.request_doc,
                    request_bytes=request_bytes)


def update_live(recorder: Recorder, live: LiveCall, obs: Observation | None) -> None:
    """The running counts of what the meter has seen so far, to the recorder."""
    if obs is None:
        return
    usage = obs.usage
    if usage is not None and usage.output_tokens is not None:
        live.usage_source = "reported"
        live.usage = usage  # every billed unit: priced as the final record will be
    else:
        live.usage_source = "estimated"
        out = (len(obs.output_text) + obs.output_chars_dropped + 3) // 4
        live.usage = replace(usage or Usage(), output_tokens=out, reasoning_tokens=None)
    # input not reported yet (OpenAI streams report it at the end): the recorder estimates
    live.input_tokens, live.output_tokens = live.usage.input_tokens, live.usage.output_tokens
    if obs.response_model:
        live.model = obs.response_model
    recorder.progress(live)
