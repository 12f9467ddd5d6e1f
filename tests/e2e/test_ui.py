"""The /ui page in a real headless Chromium (Debian's, driven by Playwright): it renders, a
call started through the proxy appears in flight within 1 s, and its final cost on the page
equals the ledger's. A screenshot is kept in tests/artifacts/."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import expect

from proxy import state
from tests.conftest import FakeUpstream, Proxy, Reply, Sdks, StartProxy
from tests.e2e.test_ledger_metrics import rows
from tests.e2e.test_passthrough import CHAT_STREAM, SSE
from tests.e2e.test_quota import MSGS, RESET_5H, claude_code, scripted, unified
from tests.factories import chat_json

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


WIDTHS = (1280, 1440, 1920)
# Each card's content must fit its card: nothing cut off, no horizontal scrolling.
OVERFLOW = """() => [...document.querySelectorAll('section')].filter((s) => s.offsetParent !== null)
  .map((s) => [s.querySelector('h2').textContent, s.scrollWidth, s.clientWidth])
  .filter(([, scroll, client]) => scroll > client)"""


async def test_an_empty_page_says_so_at_every_width(proxy: Proxy, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    for text in ("No calls in flight.", "No calls in this period.", "No budgets configured.",
                 "No quota headers seen yet.", "No spend in the last 30 days.", "No calls yet.",
                 "No consumer keys issued.", "No budget notices yet.",
                 "No rate limits configured."):
        await expect(page.get_by_text(text)).to_be_visible()
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        assert await page.evaluate(OVERFLOW) == [], width


LONG_AGENT = "research-agent-with-a-rather-long-descriptive-name-for-the-whole-fleet"
LONG_MODEL = "mystery-model-with-a-very-long-name-2026-preview-extended-context-edition"


async def test_spend_totals_and_latest_calls_by_end_time_fit_every_width(
        upstream: FakeUpstream, proxy: Proxy, browser: Any) -> None:
    release = asyncio.Event()
    usages = {"gpt-4o": {"prompt_tokens": 1000, "completion_tokens": 100},
              LONG_MODEL: {"prompt_tokens": 300, "completion_tokens": 30}}

    async def reply(request: web.Request) -> web.Response:
        doc = await request.json()
        if doc["messages"][0]["content"] == "slow":
            await release.wait()
        usage = None if doc["messages"][0]["content"] == "no usage" else usages[doc["model"]]
        if doc["messages"][0]["content"] == "sub":
            usage = {"prompt_tokens": 200, "completion_tokens": 50}
        return web.Response(body=chat_json(doc["model"], usage),
                            content_type="application/json")

    upstream.on("/v1/chat/completions", reply)
    async with aiohttp.ClientSession() as s:
        async def call(model: str, content: str, **tags: str) -> str:
            headers = {f"X-Meter-{k.replace('_', '-')}": v for k, v in tags.items()}
            async with s.post(f"{proxy.url}/openai/v1/chat/completions", headers=headers,
                              json={"model": model,
                                    "messages": [{"role": "user", "content": content}]}) as r:
                await r.read()
                return r.headers["X-Meter-Call-Id"]

        # a main call, then its sub-agent's call (it ends after its parent)
        main = await call("gpt-4o", "main", agent="planner", session="s-1", run="r-main")
        sub = await call("gpt-4o", "sub", agent="helper", session="s-1", run="r-sub",
                         parent_run="r-main")
        # `late` starts before `early` and ends after it
        late_call = asyncio.ensure_future(call(LONG_MODEL, "slow", agent=LONG_AGENT))
        for _ in range(500):  # `late` waits upstream
            if len(upstream.requests) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(upstream.requests) == 3
        early = await call("gpt-4o", "no usage", agent=LONG_AGENT)
        release.set()
        late = await late_call
    await proxy.collector.wait_for(4)
    await proxy.app[state.LEDGER].flush()
    est = {r["call_id"]: r for r in rows(proxy)}[early]
    assert est["usage_source"] == "estimated"

    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    await page.wait_for_selector(f'#calls tr[data-call="{late}"]', timeout=5_000)
    # newest end first; the sub-agent's call right under its parent's, marked
    order = await page.eval_on_selector_all("#calls tbody tr", "rs => rs.map(r => r.dataset.call)")
    assert order == [late, early, main, sub]
    assert await page.get_attribute(f'#calls tr[data-call="{sub}"]', "class") == "sub"
    assert (await page.inner_text(f'#calls tr[data-call="{sub}"] td:nth-child(2)')) == "↳ helper"
    # the period's total: gpt-4o at $2.50 in, $10 out per million tokens; LONG_MODEL unpriced
    cost = (1000 * 2.5 + 100 * 10) / 1e6 + (200 * 2.5 + 50 * 10) / 1e6 \
        + (est["input_tokens"] * 2.5 + est["output_tokens"] * 10) / 1e6
    tokens = 1100 + 250 + 330 + est["input_tokens"] + est["output_tokens"]
    foot = await page.eval_on_selector_all("#spend tfoot td", "ts => ts.map(t => t.innerText)")
    assert foot == ["total", "4", f"{tokens:,}", f"${cost:.6f}\n+1 unpriced (1 est.)"]
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        assert await page.evaluate(OVERFLOW) == [], width
        # every cost cell lies inside its card
        cut = await page.evaluate("""() => [...document.querySelectorAll('td.num')].filter((td) =>
            td.getBoundingClientRect().right > td.closest('section').getBoundingClientRect().right)
            .map((td) => td.innerText)""")
        assert cut == [], width
        await page.screenshot(path=str(ARTIFACTS / f"ui-{width}.png"), full_page=True)


async def test_a_stream_in_flight_shows_its_model_at_once_and_input_in_its_cost(
        upstream: FakeUpstream, proxy: Proxy, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    # no usage until the end, as OpenAI streams go; the first byte after 1 s
    chunks = [c for c in CHAT_STREAM if b'"usage":{' not in c and b"[DONE]" not in c] * 3
    chunks += [c for c in CHAT_STREAM if b'"usage":{' in c or b"[DONE]" in c]
    upstream.on("/v1/chat/completions", Reply(chunks, headers=SSE, first_delay=1.0, delay=0.3))
    async with aiohttp.ClientSession() as s:
        call = asyncio.ensure_future(s.post(
            f"{proxy.url}/openai/v1/chat/completions", headers={"X-Meter-Agent": "writer"},
            json={"model": "gpt-4o", "stream": True,
                  "messages": [{"role": "user", "content": "Capital of Portugal?"}]}))
        row = page.locator("#inflight tbody tr")
        await expect(row).to_have_count(1, timeout=1_000)
        # the model the request named, before any response byte
        assert await row.locator("td").nth(2).inner_text() == "gpt-4o"
        assert upstream.sent == []
        # running counts: input (estimated from the request) is in the running cost
        await page.wait_for_function("""() => {
            const td = document.querySelector('#inflight tbody tr td.cost');
            return td && td.innerText.startsWith('$'); }""", timeout=5_000)
        shown = await row.locator("td").all_inner_texts()
        resp = await call
        await resp.read()
    n_in, n_out = int(shown[3].replace(",", "")), int(shown[4].replace(",", ""))
    assert n_in > 0 and n_out > 0
    # gpt-4o: $2.50 per million input tokens, $10 per million output tokens
    assert shown[5] == f"${(n_in * 2.5 + n_out * 10) / 1e6:.6f}"


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


async def test_the_quota_card_shows_each_accounts_windows_live(
        upstream: FakeUpstream, proxy: Proxy, sdk: Sdks, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    await expect(page.get_by_text("No quota headers seen yet.")).to_be_visible()
    upstream.on("/v1/messages", scripted([unified(0.42, 0.3), unified(0.47, 0.31),
                                          unified(0.97, 0.8, "allowed_warning")]))
    client = claude_code(sdk, proxy, "s-ui", "sk-ant-oat01-account-ui")
    await client.messages.create(model="claude-sonnet-4-20250514", max_tokens=10,
                                 messages=MSGS)
    await proxy.collector.wait_for(1)
    account = proxy.collector.records[0].key_id
    assert account is not None
    row = f'#quota tr[data-account="anthropic/{account}"]'
    # the page was open: the call's end brings the card up to date
    await expect(page.locator(f'{row}[data-window="5h"] td.used')).to_have_text(
        "42.0%", timeout=5_000)
    await expect(page.locator(f'{row}[data-window="7d"] td.used')).to_have_text("30.0%")
    assert await page.is_hidden("#quota-empty")
    await client.messages.create(model="claude-sonnet-4-20250514", max_tokens=10,
                                 messages=MSGS)
    await expect(page.locator(f'{row}[data-window="5h"] td.used')).to_have_text(
        "47.0%", timeout=5_000)
    # when each window resets: from now, with the exact time in its title
    resets = page.locator(f'{row}[data-window="5h"] td.resets')
    assert await resets.get_attribute("title") == \
        datetime.fromtimestamp(RESET_5H, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    left = re.fullmatch(r"in (\d+)h (\d+)m", await resets.inner_text())
    assert left is not None
    shown = int(left[1]) * 3600 + int(left[2]) * 60
    assert RESET_5H - time.time() - 120 <= shown <= RESET_5H - time.time() + 60
    assert re.fullmatch(r"in 4d \d+h", await page.inner_text(
        f'{row}[data-window="7d"] td.resets'))
    assert await page.inner_text(f'{row}[data-window="5h"] td:nth-child(5)') == "allowed"
    # near the limit: the window's warning status, and the card still fits every width
    await client.messages.create(model="claude-sonnet-4-20250514", max_tokens=10,
                                 messages=MSGS)
    status = page.locator(f'{row}[data-window="5h"] td:nth-child(5)')
    await expect(status).to_have_text("allowed_warning", timeout=5_000)
    assert await status.get_attribute("class") == "state-warning"
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        assert await page.evaluate(OVERFLOW) == [], width
    await page.screenshot(path=str(ARTIFACTS / "ui-quota.png"), full_page=True)


async def test_the_rate_limits_card_shows_each_window_as_calls_settle(
        upstream: FakeUpstream, start_proxy: StartProxy, browser: Any) -> None:
    proxy = await start_proxy(rate_limits=[
        {"name": "bot-rpm", "match": {"agent": "bot"}, "requests_per_minute": 5,
         "tokens_per_minute": 1000}])
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    row = page.locator('#rates tr[data-limit="bot-rpm"]')
    await expect(row.locator("td:nth-child(3)")).to_have_text("0 / 5", timeout=5_000)
    assert await row.locator("td:nth-child(2)").inner_text() == "agent=bot"
    upstream.on("/v1/chat/completions", Reply([chat_json("gpt-4o", {
        "prompt_tokens": 12, "completion_tokens": 30})]))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                          headers={"X-Meter-Agent": "bot"},
                          json={"model": "gpt-4o", "max_tokens": 100,
                                "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
    # the call's end brings the card up to date: one request, the 42 tokens it used
    await expect(row.locator("td:nth-child(3)")).to_have_text("1 / 5", timeout=5_000)
    await expect(row.locator("td:nth-child(4)")).to_have_text("42 / 1,000")
    assert await row.locator("td:nth-child(5)").inner_text() == "-"  # no dollar limit
    assert await page.is_hidden("#rates-empty")
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        assert await page.evaluate(OVERFLOW) == [], width


async def test_a_pending_background_response_says_pending_then_its_usage_row_its_cost(
        upstream: FakeUpstream, proxy: Proxy, browser: Any) -> None:
    from tests.e2e.test_background_responses import COST, RID, FakeResponses

    FakeResponses(upstream)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/responses",
                          headers={"X-Meter-Agent": "poller"},
                          json={"model": "gpt-4.1", "input": "hi", "background": True}) as r:
            await r.read()
            create = r.headers["X-Meter-Call-Id"]
    await proxy.collector.wait_for(1)
    await proxy.app[state.LEDGER].flush()
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    # not known yet: neither $0 nor unpriced
    await expect(page.locator(f'#calls tr[data-call="{create}"] td.cost')).to_have_text(
        "pending", timeout=5_000)
    foot = await page.eval_on_selector_all("#spend tfoot td", "ts => ts.map(t => t.innerText)")
    assert foot[-1] == "-\n+1 pending"
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/openai/v1/responses/{RID}") as r:
        await r.read()
    await proxy.collector.wait_for(3)
    await proxy.app[state.LEDGER].flush()
    usage_row = next(r for r in rows(proxy) if r["call_id"].startswith("g"))
    assert usage_row["agent"] == "poller"
    # the usage row arrives on the live feed with its cost (gpt-4.1, priced by hand)
    await expect(page.locator(f'#calls tr[data-call="{usage_row["call_id"]}"] td.cost')
                 ).to_have_text(f"${COST:.6f}", timeout=5_000)


async def test_the_keys_card_shows_each_key_and_never_a_secret(
        upstream: FakeUpstream, proxy: Proxy, browser: Any) -> None:
    upstream.on("/v1/chat/completions", Reply([chat_json("gpt-4o", {"prompt_tokens": 3,
                                                                     "completion_tokens": 2})]))
    async with aiohttp.ClientSession() as s:
        made = []
        for body in ({"name": "alice", "tags": {"team": "ml"},
                      "limits": {"requests_per_minute": 100, "usd_per_minute": 0.5}},
                     {"name": "bob", "expires_at": "2020-01-01T00:00:00Z"},
                     {"name": "carol"}):
            async with s.post(f"{proxy.url}/api/keys", json=body) as r:
                made.append(await r.json())
        async with s.delete(f"{proxy.url}/api/keys/{made[2]['id']}") as r:
            assert r.status == 200
        async with s.post(f"{proxy.url}/ollama/v1/chat/completions",
                          headers={"Authorization": f"Bearer {made[0]['key']}"},
                          json={"model": "gpt-4o", "messages": []}) as r:
            assert r.status == 200
    await proxy.collector.wait_for(1)
    await proxy.app[state.LEDGER].flush()
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    rows_ = page.locator("#keys tbody tr")
    await expect(rows_).to_have_count(3, timeout=5_000)
    alice = await page.inner_text(f'#keys tr[data-key="{made[0]["id"]}"]')
    assert "alice" in alice and made[0]["id"] in alice and "team=ml" in alice
    assert "100 req/min" in alice and "0.5 $/min" in alice and "active" in alice
    assert "never" in alice.split("active")[0]  # no expiry
    assert "never" not in alice.split("active")[1]  # used: the call's time
    assert "expired" in await page.inner_text(f'#keys tr[data-key="{made[1]["id"]}"]')
    assert "revoked" in await page.inner_text(f'#keys tr[data-key="{made[2]["id"]}"]')
    html = await page.content()
    assert all(m["key"] not in html for m in made)  # never a secret
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        assert await page.evaluate(OVERFLOW) == [], width


async def test_spend_shows_the_list_price_under_a_negotiated_charge(
        upstream: FakeUpstream, start_proxy: StartProxy, browser: Any) -> None:
    """pricing.adjustments: the spend cells show the charged cost, and the list price under
    it where they differ; where no adjustment matched, the cost alone."""
    proxy = await start_proxy(pricing={"adjustments": [
        {"match": {"upstream": "openai", "model": "gpt-4o-mini*"}, "percent": -20}]})

    async def reply(request: web.Request) -> web.Response:
        doc = await request.json()
        return web.Response(body=chat_json(doc["model"], {"prompt_tokens": 1000,
                                                          "completion_tokens": 500}),
                            content_type="application/json")

    upstream.on("/v1/chat/completions", reply)
    async with aiohttp.ClientSession() as s:
        for model in ("gpt-4o-mini", "gpt-4o"):
            async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                              headers={"X-Meter-Agent": "ana"},
                              json={"model": model,
                                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                await r.read()
    await proxy.collector.wait_for(2)
    await proxy.app[state.LEDGER].flush()
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    await expect(page.locator("#spend tfoot td")).to_have_count(4, timeout=5_000)
    # gpt-4o-mini: 1000 x $0.15 + 500 x $0.60 per million = $0.00045 list, 20 % off: $0.00036
    # gpt-4o: 1000 x $2.50 + 500 x $10 per million = $0.0075, no adjustment
    by_model = await page.eval_on_selector_all(
        "#spend tbody tr", "rs => rs.map(r => [r.cells[1].innerText, r.cells[4].innerText])")
    assert sorted(by_model) == [["gpt-4o", "$0.007500"],
                                ["gpt-4o-mini", "$0.000360\nlist $0.000450"]]
    foot = await page.eval_on_selector_all("#spend tfoot td", "ts => ts.map(t => t.innerText)")
    assert foot[-1] == "$0.007860\nlist $0.007950"


async def test_layered_budgets_and_their_notices_on_the_page(
        upstream: FakeUpstream, start_proxy: StartProxy, browser: Any) -> None:
    """A budget with a day and a rolling 5-hour window: a row for each; one call of $0.001
    (1000 output tokens at $1 per million) is 100 % of the rolling window's $0.001, and the
    notice (no sink: kept for the page) is listed."""
    upstream.on("/v1/chat/completions", Reply([chat_json("cap-model", {
        "prompt_tokens": 10, "completion_tokens": 1000})]))
    proxy = await start_proxy(
        pricing={"models": {"cap-model": {"input": 0, "output": 1.0}}},
        budgets=[{"name": "team", "match": {"agent": "bot"}, "thresholds": [1.0], "windows": [
            {"window": "day", "limit_usd": 5, "action": "block"},
            {"window": "rolling", "hours": 5, "limit_usd": 0.001, "action": "alert"}]}])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/openai/v1/chat/completions",
                          headers={"X-Meter-Agent": "bot"},
                          json={"model": "cap-model",
                                "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200 and await r.read()
        # The page reads the notices when it loads (and after each call): the notice must
        # be in the outbox first, which the record's budgets sink does after the answer.
        noticed: list[Any] = []

        async def outbox() -> bool:
            async with s.get(f"{proxy.url}/api/notices") as r:
                noticed[:] = (await r.json())["notices"]
            return bool(noticed)

        for _ in range(200):  # bounded: 10 s
            if await outbox():
                break
            await asyncio.sleep(0.05)
        assert len(noticed) == 1
    page = await browser.new_page()
    await page.goto(f"{proxy.url}/ui")
    await expect(page.locator("#status")).to_have_text("live", timeout=10_000)
    await expect(page.locator("#budgets tbody tr")).to_have_count(2)
    await expect(page.locator("#notices tbody tr")).to_have_count(1, timeout=10_000)
    rows_ = await page.locator("#budgets tbody tr").all_inner_texts()
    assert [r.split("\t")[:2] for r in rows_] == [["team", "day"], ["team", "rolling_5h"]]
    notice = await page.inner_text("#notices tbody tr")
    assert "Budget 'team' (rolling_5h window): $0.001 spent, 100% of its $0.001 limit" in notice
    assert "no sink" in notice
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        assert await page.evaluate(OVERFLOW) == [], width
