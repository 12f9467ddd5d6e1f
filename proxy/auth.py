"""Client authentication, a step of every call before admission: the credential the caller
presents (its auth headers, or a WebSocket's subprotocol) is a consumer key issued at run
time (`tb-…`: live, allowed this upstream and the models the call names, its tags on the
call) or, on an upstream with `api_key` or `aws`, a client key from `auth.client_keys`; with
either, the provider's own key goes upstream in its place. A credential that does not pass
refuses the call (401, 403) in the caller's SDK's shape (`proxy.refusals`).
"""

from __future__ import annotations

import time

from aiohttp import web

from proxy import headers as hdr
from proxy.keyring import KeyRegistry
from proxy.keys import SECRET_PREFIX, allows
from proxy.outcome import End
from proxy.record import CallFacts
from proxy.refusals import Refused, refuse
from proxy.routing import Route
from proxy.sockets import is_upgrade, subprotocol_key

__all__ = ["authenticate", "key_allows_model"]


def authenticate(request: web.Request, route: Route, facts: CallFacts,
                 keys: KeyRegistry | None, client_keys: dict[str, str]
                 ) -> dict[str, str] | None:
    """A consumer key (issued at run time) or, with `api_key` on the upstream, a client
    key from auth.client_keys; with either, we supply the provider's key (a consumer
    key on an upstream without one is removed: the call goes without a credential)."""
    facts.credential = cred = hdr.credential(request.headers) or (
        subprotocol_key(request.headers) if is_upgrade(request) else None)
    up = route.upstream
    if cred is not None and cred.startswith(SECRET_PREFIX) and keys is not None:
        _consumer_key(keys, cred, route, facts)
    elif not up.api_key and up.aws is None:
        return None
    else:
        client = client_keys.get(cred or "")
        if client is None:
            raise Refused(refuse(
                facts, End.CLIENT_KEY, "authentication_error",
                "this upstream needs a client key (a consumer key, or one from "
                "auth.client_keys)", route.provider))
        facts.client = client
    # ours; or none: signed with the upstream's aws keys, or sent without a credential
    return route.provider.key_headers(up.api_key) if up.api_key else {}


def _consumer_key(keys: KeyRegistry, credential: str, route: Route, facts: CallFacts) -> None:
    """A `tb-` credential: a live consumer key, allowed this upstream (and the model the
    path names), or the call is refused (401, 403) in the caller's SDK's shape."""
    stored = keys.lookup(credential)
    why = "unknown" if stored is None else stored.refusal(time.time())
    if why is not None:
        raise Refused(refuse(
            facts, End.KEY_REFUSED, "authentication_error",
            f"this consumer key is {why}" + ("" if stored is None else
                                             f" ({stored.key.id})"), route.provider,
            detail=why))
    key = facts.key = stored.key
    facts.client = key.name
    tags, meter = facts.tags, facts.meter_tag_keys
    for k, v in key.tags.items():  # over other tools' tags (read before); X-Meter-* wins
        if k not in meter:
            tags[k] = v
    if not allows(key.upstreams, route.upstream.name):
        _forbid(facts, route, f"upstream {route.upstream.name!r}", key.upstreams)
    key_allows_model(facts, route, route.path_model)


def _forbid(facts: CallFacts, route: Route, what: str, allowed: tuple[str, ...]) -> None:
    assert facts.key is not None
    raise Refused(refuse(
        facts, End.KEY_FORBIDDEN, "permission_error",
        f"consumer key {facts.key.id} ({facts.key.name}) may not use {what}; allowed: "
        + ", ".join(allowed), route.provider, detail=what))


def key_allows_model(facts: CallFacts, route: Route, model: str | None) -> None:
    """A model the call names (its path, its body, a socket's query), against the
    consumer key's model globs."""
    key = facts.key
    if key is not None and not allows(key.models, model):
        _forbid(facts, route, f"model {model!r}", key.models)
