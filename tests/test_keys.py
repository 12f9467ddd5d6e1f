"""Consumer keys' pure rules: the secret and its stored hash, what a request to create or
change a key may say (and the clear error when it says something else), the globs, and
the stored row's round trip."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from proxy.keys import (
    ConsumerKey,
    KeyLimits,
    KeySpecError,
    StoredKey,
    allows,
    from_row,
    hash_secret,
    new_id,
    new_secret,
    parse_expiry,
    parse_spec,
    to_row,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_a_secret_is_tb_and_32_random_urlsafe_bytes() -> None:
    secrets = {new_secret() for _ in range(200)}
    assert len(secrets) == 200
    for s in secrets:
        assert s.startswith("tb-") and len(s) == 3 + 43
        assert len(base64.urlsafe_b64decode(s[3:] + "=")) == 32  # 256 bits of entropy
    assert all(i.startswith("key_") and len(i) == 16 for i in {new_id() for _ in range(50)})


def test_the_stored_hash_is_an_hmac_keyed_with_the_install_secret() -> None:
    secret = new_secret()
    a, b = hash_secret(b"install-a", secret), hash_secret(b"install-b", secret)
    assert a != b and len(a) == 64 and secret not in a  # another install: another hash
    assert hash_secret(b"install-a", secret) == a  # stable: a lookup key
    assert hash_secret(b"install-a", secret + "x") != a


def test_globs_restrict_only_when_given() -> None:
    assert allows((), "anything") and allows(("gpt-4o*",), None)  # nothing named: no check
    assert allows(("gpt-4o*", "o3"), "gpt-4o-mini") and allows(("gpt-4o*", "o3"), "o3")
    assert not allows(("gpt-4o*", "o3"), "o3-mini") and not allows(("openai",), "OpenAI")


def test_a_full_spec() -> None:
    spec = parse_spec({"name": " alice ", "tags": {"Team": "ml"}, "upstreams": ["openai"],
                       "models": ["gpt-4o*"], "expires_at": "2027-01-31",
                       "limits": {"requests_per_minute": 100, "usd_per_minute": 0.5}}, now=NOW)
    assert spec == {"name": "alice", "tags": {"team": "ml"}, "upstreams": ("openai",),
                    "models": ("gpt-4o*",), "expires_at": "2027-01-31T00:00:00.000Z",
                    "limits": KeyLimits(requests_per_minute=100, usd_per_minute=0.5)}
    assert parse_spec({"limits": {"tokens_per_minute": 5000}}, partial=True) == \
        {"limits": KeyLimits(tokens_per_minute=5000)}


@pytest.mark.parametrize("doc,field", [
    ([], "body"),
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "a", "colour": "red"}, "colour"),
    ({"name": "a", "tags": {"team": 1}}, "tags"),
    ({"name": "a", "upstreams": "openai"}, "upstreams"),
    ({"name": "a", "models": [""]}, "models"),
    ({"name": "a", "expires_at": "next tuesday"}, "expires_at"),
    ({"name": "a", "limits": {"requests_per_minute": 0}}, "limits.requests_per_minute"),
    ({"name": "a", "limits": {"requests_per_minute": 1.5}}, "limits.requests_per_minute"),
    ({"name": "a", "limits": {"usd_per_minute": True}}, "limits.usd_per_minute"),
    ({"name": "a", "limits": {"per_hour": 3}}, "limits.per_hour"),
])
def test_a_bad_spec_names_the_field(doc: object, field: str) -> None:
    with pytest.raises(KeySpecError) as err:
        parse_spec(doc)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")


def test_expiry_forms() -> None:
    assert parse_expiry(None) is None
    assert parse_expiry("30d", NOW) == "2027-01-02T12:00:00.000Z"
    assert parse_expiry("12h", NOW) == "2026-12-04T00:00:00.000Z"
    assert parse_expiry("2027-01-01T02:00:00+02:00") == "2027-01-01T00:00:00.000Z"


def test_a_stored_key_round_trips_through_its_row_and_never_shows_its_hash() -> None:
    key = ConsumerKey("key_0123456789ab", "alice", {"team": "ml"}, ("openai",), ("gpt-*",),
                      "2027-01-01T00:00:00.000Z", KeyLimits(requests_per_minute=10))
    stored = StoredKey(key, "h" * 64, "wxyz", "2026-12-03T12:00:00.000Z")
    back = from_row(to_row(stored))
    assert back.key == key and back.hash == stored.hash and back.revoked_at is None
    assert back.expires == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert back.expired(back.expires) and not back.expired(back.expires - 1)
    shown = back.to_json()
    assert "h" * 64 not in str(shown) and shown["last4"] == "wxyz"
    assert shown["limits"] == {"requests_per_minute": 10, "tokens_per_minute": None,
                               "usd_per_minute": None}
