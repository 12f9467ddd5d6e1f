"""Header hygiene both ways and X-Meter-* tags, pushed through as plain values: hop-by-hop
and `Connection`-listed headers never cross, our headers never reach the upstream, a
replaced credential leaves no client credential behind, tags are cleaned and capped."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.headers import (
    HOP_BY_HOP,
    MAX_TAG_CHARS,
    MAX_TAGS,
    credential,
    inbound,
    outbound,
    parse_tags,
)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_outbound_drops_hop_by_hop_host_length_ours_and_connection_listed() -> None:
    got = outbound(headers(
        ("Host", "127.0.0.1:8787"), ("Content-Length", "12"), ("Connection", "keep-alive, X-Trace"),
        ("Keep-Alive", "timeout=5"), ("X-Trace", "t-1"), ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Authorization", "Basic x"),
        ("X-Meter-Agent", "planner"), ("x-meter-run", "r-1"), ("Authorization", "Bearer sk-1"),
        ("Content-Type", "application/json"), ("Accept", "a"), ("Accept", "b")))
    assert list(got.items()) == [("Authorization", "Bearer sk-1"),
                                 ("Content-Type", "application/json"),
                                 ("Accept", "a"), ("Accept", "b")]  # repeated ones kept


def test_outbound_identity_and_replaced_credentials() -> None:
    sent = headers(("Authorization", "Bearer client-key"), ("x-api-key", "client-ant"),
                   ("api-key", "azure"), ("X-Goog-Api-Key", "goog"), ("Accept-Encoding", "br"),
                   ("X-Other", "kept"))
    got = outbound(sent, identity=True, replace_auth={"x-api-key": "sk-ant-proxy"})
    assert dict(got) == {"X-Other": "kept", "Accept-Encoding": "identity",
                         "x-api-key": "sk-ant-proxy"}
    # signed upstreams: every client credential goes, nothing is put in its place
    assert dict(outbound(sent, replace_auth={})) == {"Accept-Encoding": "br", "X-Other": "kept"}


def test_outbound_strips_every_header_named_by_a_given_prefix() -> None:
    sent = headers(("X-Meter-Agent", "a"), ("Helicone-Auth", "Bearer sk-h"),
                   ("HELICONE-PROPERTY-X", "1"), ("X-Helicone", "kept: not the prefix"),
                   ("Accept", "a"))
    assert list(outbound(sent, strip=("x-meter-", "helicone-")).items()) == [
        ("X-Helicone", "kept: not the prefix"), ("Accept", "a")]
    # by default, ours alone
    assert list(outbound(sent)) == ["Helicone-Auth", "HELICONE-PROPERTY-X", "X-Helicone",
                                    "Accept"]


def test_inbound_drops_hop_by_hop_and_optionally_the_length() -> None:
    resp = headers(("Content-Type", "text/event-stream"), ("Content-Length", "99"),
                   ("Connection", "close, X-Internal"), ("X-Internal", "1"),
                   ("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip"),
                   ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"))
    assert list(inbound(resp).items()) == [
        ("Content-Type", "text/event-stream"), ("Content-Length", "99"),
        ("Content-Encoding", "gzip"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert "Content-Length" not in inbound(resp, drop_length=True)
    assert all(h not in inbound(resp) for h in HOP_BY_HOP)


def test_tags_from_meter_headers_named_in_snake_case() -> None:
    got = parse_tags({"X-Meter-Agent": "planner", "x-meter-parent-run": "r-6",
                      "X-Meter-Team-Name": "  core ", "X-Meter-": "nameless",
                      "Authorization": "Bearer sk"})
    assert got.tags == {"agent": "planner", "parent_run": "r-6", "team_name": "core"}
    assert got.cleaned == 1  # the padded value


def test_tags_from_name_value_pairs_repeated_names_the_last_wins() -> None:
    got = parse_tags([("x-meter-run", "r-1"), ("x-meter-run", "r-2"), ("accept", "a")])
    assert got.tags == {"run": "r-2"} and got.cleaned == 0


def test_tag_values_are_cleaned_truncated_and_counted() -> None:
    got = parse_tags({"X-Meter-Note": "a\x00b\x1bc", "X-Meter-Long": "x" * 1000,
                      "X-Meter-\x01": "key made only of control characters"})
    assert got.tags == {"note": "abc", "long": "x" * MAX_TAG_CHARS}
    assert got.cleaned == 3  # cleaned, truncated, dropped


def test_at_most_max_tags_keys_the_rest_counted() -> None:
    sent = {f"X-Meter-K{i}": str(i) for i in range(MAX_TAGS + 5)}
    got = parse_tags(sent)
    assert len(got.tags) == MAX_TAGS and got.tags["k0"] == "0"
    assert f"k{MAX_TAGS}" not in got.tags and got.cleaned == 5


def test_credential_is_the_key_or_the_sigv4_access_key_id() -> None:
    assert credential({"authorization": "Bearer sk-live-1"}) == "sk-live-1"
    assert credential({"x-api-key": "sk-ant-1"}) == "sk-ant-1"
    assert credential({"x-goog-api-key": "AIza-1"}) == "AIza-1"
    signed = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261120/us-east-1/bedrock/aws4_request,"
              " SignedHeaders=host;x-amz-date, Signature=abc123")
    assert credential({"authorization": signed}) == "AKIDEXAMPLE"
    assert credential({"authorization": "AWS4-HMAC-SHA256 Signature=x"}) is None
    assert credential({"content-type": "application/json"}) is None
