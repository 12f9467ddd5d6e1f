"""The SQLite backend: a ledger file that cannot be written when the proxy starts is
written, every row once, as soon as it can be."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from proxy.sinks.ledger import Ledger
from tests.conftest import FakeUpstream, Reply, obey_file_modes
from tests.e2e.test_disconnects import served
from tests.sinks.test_ledger import count_rows, wait_until
from tests.test_fleet import until

USAGE = json.dumps({"model": "gpt-4o", "usage": {"prompt_tokens": 10,
                                                 "completion_tokens": 2}}).encode()
async def test_a_ledger_read_only_at_start_is_written_once_it_is_writable(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.on("/v1/chat/completions", Reply([USAGE]))
    db = tmp_path / "ro.db"
    ledger = Ledger(str(db))
    await ledger.open()  # an existing ledger, schema and all
    await ledger.aclose()
    db.chmod(0o444)
    config = (f"upstreams: {{openai: {{url: '{upstream.url}'}}}}\n"
              f"ledger: {{path: '{db}', flush_seconds: 0.01}}\n")
    async with served(tmp_path, config, preexec_fn=obey_file_modes) as (_proc, port):
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                async with s.post(f"{base}/openai/v1/chat/completions", json={"i": i}) as r:
                    assert r.status == 200

            async def readyz() -> tuple[int, dict[str, object]]:
                async with s.get(f"{base}/readyz") as r:
                    return r.status, await r.json()

            async def stuck() -> tuple[int, dict[str, object]] | None:
                got = await readyz()
                return got if got[0] == 503 and got[1].get("spooled_rows") == 5 else None
            # the rows wait in the spool, and readiness says so
            assert (await until(stuck))[1] == {"status": "ledger_unavailable",
                                               "spooled_rows": 5, "held_rows": 0}
            assert count_rows(str(db)) == (0, 0)
            db.chmod(0o644)
            await wait_until(lambda: count_rows(str(db)) == (5, 5))

            async def ready() -> bool:
                return (await readyz())[0] == 200
            await until(ready)
