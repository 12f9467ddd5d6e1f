"""The /ui page in a real headless Chromium (Debian's, driven by Playwright): it renders, a
call started through the proxy appears in flight within 1 s, and its final cost on the page
equals the ledger's. A screenshot is kept in tests/artifacts/."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, StartProxy
from tests.e2e.test_ledger_metrics import rows
from tests.e2e.test_passthrough import CHAT_STREAM, SSE

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def browser() -> Any:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def test_the_page_shows_a_call_in_flight_then_its_ledger_cost(
        upstream: FakeUpstream, proxy: Proxy, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    # a slow stream: 3 chunks 0.7 s apart, so the call is in flight for over a second
    upstream.on("/v1/chat/completions", Reply(CHAT_STREAM, headers=SSE, delay=0.7))
    import aiohttp

    async with aiohttp.ClientSession() as s:
        call = asyncio.ensure_future(s.post(
            f"{proxy.url}/openai/v1/chat/completions",
            headers={"X-Meter-Agent": "researcher", "X-Meter-Session": "s-ui"},
            json={"model": "gpt-4o", "stream": True,
                  "messages": [{"role": "user", "content": "hi"}]}))
        # in flight on the page within 1 s of the call starting
        await page.wait_for_selector("#inflight tbody tr", timeout=1_000)
        assert "researcher" in await page.inner_text("#inflight tbody")
        resp = await call
        await resp.read()
    await proxy.collector.wait_for(1)
    await proxy.app[state.LEDGER].flush()
    (row,) = rows(proxy)
    # the latest-calls table shows the ledger's cost, to the micro-dollar
    await page.wait_for_selector(f'#calls tr[data-call="{row["call_id"]}"]', timeout=5_000)
    shown = await page.inner_text(f'#calls tr[data-call="{row["call_id"]}"] td.cost')
    assert shown == f"${row['cost_usd']:.6f}"
    await expect(page.locator("#inflight tbody tr")).to_have_count(0, timeout=5_000)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
    assert (ARTIFACTS / "ui.png").stat().st_size > 10_000


async def test_with_an_admin_token_the_page_asks_for_it(upstream: FakeUpstream,
                                                        start_proxy: StartProxy,
                                                        browser: Any) -> None:
    proxy = await start_proxy(admin={"token": "t0ken"})
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await page.wait_for_selector("#login", state="visible", timeout=5_000)
    await page.fill("#token", "t0ken")
    await page.click("#go")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    assert await page.evaluate("sessionStorage.getItem('tb-token')") == "t0ken"
    assert await page.is_hidden("#login")


async def test_only_the_pages_own_script_runs(proxy: Proxy, browser: Any) -> None:
    """The CSP names the page's inline script by its SHA-256 (no 'unsafe-inline'): the
    page works, and a script that got into its HTML some other way does not run."""
    page = await browser.new_page()
    resp = await page.goto(f"{proxy.url}/ui")
    csp = resp.headers["content-security-policy"]
    html = (Path(__file__).parents[2] / "proxy" / "static" / "ui.html").read_bytes()
    (script,) = re.findall(rb"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    script_src = re.search(r"script-src ([^;]*)", csp)
    assert script_src is not None and script_src[1] == f"'sha256-{digest}'", csp
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    ran = await page.evaluate("""() => new Promise((done) => {
        document.addEventListener("securitypolicyviolation", () => done(window.injected === 1));
        const s = document.createElement("script");
        s.textContent = "window.injected = 1;";
        document.body.appendChild(s);
        if (window.injected === 1) done(true);
    })""")
    assert ran is False and await page.evaluate("window.injected") is None
