"""`tokenbooth keys`: create (the secret printed once), list, show, revoke, rotate, on a
SQLite file and on PostgreSQL; and a running proxy on the same SQLite ledger honours what
the command does from its own process within about a second."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.cli import main
from tests.conftest import FakeUpstream, Reply, served


def keys(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = main(["keys", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out) if "--format" in args else out.out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_create_list_show_rotate_revoke(backend: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        request: pytest.FixtureRequest) -> None:
    db = str(tmp_path / "k.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    made = keys(capsys, "create", "--db", db, "--name", "erin", "--tag", "team=ml",
                "--upstream", "openai", "--model", "gpt-4o*", "--expires",
                "2030-01-01T00:00:00Z", "--requests-per-minute", "60",
                "--usd-per-minute", "0.5", "--format", "json")
    assert made["key"].startswith("tb-") and made["name"] == "erin"
    assert made["tags"] == {"team": "ml"} and made["upstreams"] == ["openai"]
    assert made["limits"] == {"requests_per_minute": 60, "tokens_per_minute": None,
                              "usd_per_minute": 0.5}
    assert made["expires_at"] == "2030-01-01T00:00:00.000Z"
    kid = made["id"]
    text = keys(capsys, "list", "--db", db)
    assert kid in text and "erin" in text and made["key"] not in text  # never the secret
    shown = keys(capsys, "show", kid, "--db", db, "--format", "json")
    assert "key" not in shown and shown["last4"] == made["key"][-4:]
    rotated = keys(capsys, "rotate", kid, "--db", db, "--format", "json")
    assert rotated["id"] == kid and rotated["key"] != made["key"]
    assert rotated["last4"] == rotated["key"][-4:]
    text = keys(capsys, "create", "--db", db, "--name", "frank")
    assert "key: tb-" in text and "shown once" in text
    revoked = keys(capsys, "revoke", kid, "--db", db, "--format", "json")
    assert revoked["revoked_at"]
    listed = keys(capsys, "list", "--db", db, "--format", "json")["keys"]
    assert [k["name"] for k in listed] == ["frank"]  # revoked ones only with --all
    listed = keys(capsys, "list", "--db", db, "--all", "--format", "json")["keys"]
    assert [k["name"] for k in listed] == ["erin", "frank"]


def test_bad_input_exits_2_with_one_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "k.db")
    for args, want in [(["create"], "name"), (["create", "--name", "x", "--tag", "bad"],
                                             "--tag"),
                       (["create", "--name", "x", "--expires", "soon"], "expires_at"),
                       (["create", "--name", "x", "--requests-per-minute", "0"],
                        "requests_per_minute"),
                       (["show"], "id"), (["revoke", "key_nope"], "no consumer key")]:
        assert main(["keys", *args, "--db", db]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("tokenbooth: ") and want in err and err.count("\n") == 1


CHAT = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()


async def test_a_running_proxy_follows_the_cli(tmp_path: Path, upstream: FakeUpstream,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    upstream.on("/v1/chat/completions", Reply([CHAT]))
    db = str(tmp_path / "ledger.db")
    config = f"""
ledger: {{path: "{db}", flush_seconds: 0.05}}
upstreams: {{openai: {{url: "{upstream.url}", api_key: sk-provider}}}}
auth: {{client_keys: {{legacy: ck-legacy}}}}
"""
    async with served(tmp_path, config) as (_proc, port), aiohttp.ClientSession() as s:
        async def status(key: str) -> int:
            async with s.post(f"http://127.0.0.1:{port}/openai/v1/chat/completions",
                              headers={"Authorization": f"Bearer {key}"},
                              json={"model": "m", "messages": []}) as r:
                await r.read()
                return r.status

        async def until(key: str, want: int) -> float:
            t0 = time.monotonic()
            while await status(key) != want:
                assert time.monotonic() - t0 < 5, f"not {want} within 5 s"
                await asyncio.sleep(0.05)
            return time.monotonic() - t0

        made = await asyncio.to_thread(keys, capsys, "create", "--db", db, "--name", "gus",
                                       "--format", "json")
        assert await until(made["key"], 200) < 2  # polled every second
        await asyncio.to_thread(keys, capsys, "revoke", made["id"], "--db", db)
        assert await until(made["key"], 401) < 2
        assert upstream.requests[-1].headers["Authorization"] == "Bearer sk-provider"
