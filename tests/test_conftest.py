"""The shared helpers fail loudly: `served` when the process never gets ready, `wait_until`
when its condition never holds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import served, wait_until


async def test_served_names_the_exit_and_shows_the_output(tmp_path: Path) -> None:
    """A config the proxy refuses: the process exits 1, and the helper says so with the
    proxy's own error line instead of waiting out its timeout."""
    started = time.monotonic()
    with pytest.raises(AssertionError) as err:
        async with served(tmp_path, "listen: {port: 99999}\n", ready_timeout=30):
            raise AssertionError("yielded although the process never got ready")
    message = str(err.value)
    assert "exited with 1 before it was ready" in message
    assert "listen.port: 99999 is not a TCP port" in message
    assert time.monotonic() - started < 25


async def test_served_gives_up_after_its_timeout(tmp_path: Path) -> None:
    """A process still starting when the time is up: a clear failure, not a test that goes
    on against a proxy that is not there."""
    config = f"ledger: {{path: '{tmp_path / 'l.db'}'}}\n"
    with pytest.raises(AssertionError, match=r"not ready on port \d+ within 0.01 s"):
        async with served(tmp_path, config, ready_timeout=0.01):
            raise AssertionError("yielded although the process could not be ready yet")


async def test_wait_until_fails_when_the_condition_never_holds() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AssertionError, match="the impossible not met within 0.2 s"):
        await wait_until(lambda: False, timeout=0.2, what="the impossible")
    assert 0.2 <= loop.time() - started < 2
    flips = iter([False, False, True])
    await wait_until(lambda: next(flips), timeout=5)
