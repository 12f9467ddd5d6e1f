"""KeyFingerprinter: a credential's fingerprint is keyed by the install's secret."""

from __future__ import annotations

from proxy.fingerprint import KeyFingerprinter


def test_key_fingerprint_is_keyed_and_stable(tmp_path: object) -> None:
    a = KeyFingerprinter(b"secret-a")
    b = KeyFingerprinter(b"secret-b")
    assert a("sk-live-123") == a("sk-live-123") != b("sk-live-123")
    assert "sk-live" not in (a("sk-live-123") or "")
    assert a(None) is None
