"""Attack probes of the dashboard in headless Chromium (the fixtures of tests/browser: uvicorn in
the test's loop, real Postgres/Temporal/S3): markup in user content stays text on every page, and
the Content-Security-Policy of api/routes/ui.py blocks nothing the dashboard itself does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import httpx
from playwright.async_api import Browser, ConsoleMessage, Route, expect

from tests.api.test_pipelines import diamond
from tests.browser.conftest import anon, api, app, as_token, base_url, browser, db, make_box, user_token
from tests.browser.test_dashboard import sign_in

__all__ = ["anon", "api", "app", "as_token", "base_url", "browser", "db", "make_box", "user_token"]

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


async def test_markup_in_user_content_stays_text_and_the_policy_blocks_nothing_of_ours(
    browser: Browser, base_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable
) -> None:
    await make_box("xbox")
    job = await api.post(
        "/api/jobs",
        json={"box": "xbox", "script": f"echo '{XSS}'", "labels": {"x": XSS}, "env": {"E": XSS}},
    )
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    await db.execute("UPDATE jobs SET error = $2 WHERE id = $1", uuid.UUID(job_id), XSS)
    pipeline = (await api.post("/api/pipelines", json={**diamond("xbox"), "name": XSS[:100]})).json()
    page = await sign_in(browser, base_url)
    violations: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text or "Refused to" in msg.text:
            violations.append(msg.text)

    page.on("console", on_console)
    await page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.log('Refused to (CSP) ' + e.violatedDirective + ' ' + e.blockedURI))"
    )
    await page.reload()
    await expect(page.locator("#jobs")).to_be_visible()
    await page.goto(f"{base_url}/ui/#/jobs/{job_id}")
    await expect(page.locator(".error", has_text="onerror")).to_be_visible()  # the error reason, as text
    await page.click("[data-nav=new]")
    # wait for it: a page still loading when the next is clicked overwrites that one (app.js route())
    await expect(page.locator("h1", has_text="New job")).to_be_visible()
    await page.click("[data-nav=boxes]")
    await expect(page.locator("#boxes tr[data-box='xbox']")).to_be_visible()
    await page.click("[data-nav=pipelines]")
    await page.click(f"a[href='#/pipelines/{pipeline['id']}']")
    await expect(page.locator("#dag g.node")).to_have_count(len(pipeline["steps"]))
    await page.click("[data-nav=audit]")
    await page.wait_for_timeout(300)
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("img[src=x]").count() == 0
    assert not violations, violations


async def test_a_page_that_loads_slowly_never_covers_the_page_navigated_to_next(
    browser: Browser, base_url: str, api: httpx.AsyncClient, make_box: Callable
) -> None:
    """Open job A's page while its request is slow, then job B's: A's page, loading after B's, must
    not replace it (the URL would name B while the Cancel button shown acts on A)."""
    await make_box("xbox")
    a = (await api.post("/api/jobs", json={"box": "xbox", "script": "echo a"})).json()["id"]
    b = (await api.post("/api/jobs", json={"box": "xbox", "script": "echo b"})).json()["id"]
    page = await sign_in(browser, base_url)

    async def slow(route: Route) -> None:
        await asyncio.sleep(1.5)
        await route.continue_()

    await page.route(f"**/api/jobs/{a}", slow)
    await page.goto(f"{base_url}/ui/#/jobs/{a}")
    await page.wait_for_timeout(200)
    await page.goto(f"{base_url}/ui/#/jobs/{b}")
    await expect(page.locator("h1 .mono")).to_have_text(b)
    await page.wait_for_timeout(2500)  # A's answer has come meanwhile
    assert page.url.endswith(b)
    await expect(page.locator("h1 .mono")).to_have_text(b)
    assert await page.locator("h1 .mono").count() == 1
    await expect(page.locator("#live")).to_have_text("● live")  # B's log stream stayed open
