"""The dashboard pages of issue 13 in headless Chromium: webhooks (the secret shown once, deliveries
with their attempts, Redeliver, delete), secrets (names only; a saved value never in the page),
the Org page (retention, quota, usage; read-only for a viewer), Delete outputs on a job's page and
the API's 410 reason where the transcript and artifacts were, and what a viewer or an operator sees
of them (no admin buttons, the admin-only entries hidden)."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
from fastapi import FastAPI
from playwright.async_api import Browser, Dialog, Page, expect

from boxrun.constants import DEFAULT_ORG, artifact_key
from boxrun.db import Q
from tests.api.test_org_clients import ended_job
from tests.browser.test_dashboard import sign_in

SECRET_VALUE = "hunter2-browser-Zq9"


def accept_next_dialog(page: Page, seen: list[str]) -> None:
    async def accept(dialog: Dialog) -> None:
        seen.append(dialog.message)
        await dialog.accept()

    page.once("dialog", accept)


async def test_webhooks_page_shows_the_secret_once_lists_attempts_and_redelivers(
    browser: Browser, base_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, shots: Path
) -> None:
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=webhooks]")
    await expect(page.locator("#webhooks")).to_contain_text("No webhooks.")
    await page.fill("#webhook-url", "http://93.184.216.34/boxrun")
    await page.check("input[name=events][value='box.offline']")
    await page.click("#create-webhook")
    secret = page.locator("#webhook-secret")
    await expect(page.locator("#created")).to_contain_text("shown this once")
    shown = await secret.input_value()
    assert shown.startswith("whsec_")
    await page.click("#copy-secret")
    await expect(page.locator("#created .muted")).not_to_have_text("")
    (hook,) = (await api.get("/api/webhooks")).json()["data"]
    assert hook["events"] == ["job.failed", "box.offline"] and "secret" not in hook
    row = page.locator(f"#webhooks tr[data-webhook='{hook['id']}']")
    await expect(row).to_contain_text("http://93.184.216.34/boxrun")
    await page.click("#dismiss-secret")
    await page.screenshot(path=shots / "webhooks.png")
    await page.reload()  # shown once: gone from the page for good
    await expect(row).to_be_visible()
    assert shown not in await page.content()

    # a delivery that failed twice (an HTTP 500, then no answer), as the delivery activity records them
    delivery = uuid.uuid4()
    await db.execute(
        "INSERT INTO webhook_deliveries (id, webhook_id, org_id, event, subject, state, finished_at, error)"
        " VALUES ($1, $2, 'default', 'box.offline', 'bench-7', 'failed', now(), 'gave up after 24 h')",
        delivery,
        uuid.UUID(hook["id"]),
    )
    await db.execute(
        "INSERT INTO webhook_attempts (delivery_id, status_code, error, duration_ms, response) VALUES"
        " ($1, 500, 'HTTP 500', 41, 'oops'), ($1, NULL, 'timed out after 10 s', 10003, NULL)",
        delivery,
    )
    await row.locator("a.button").click()
    line = page.locator(f"#deliveries tr[data-delivery='{delivery}']")
    await expect(line.locator(".badge").first).to_have_text("failed")
    attempts = line.locator("table.attempts tbody tr")
    await expect(attempts).to_have_count(2)
    await expect(attempts.nth(0)).to_contain_text("500")
    await expect(attempts.nth(0)).to_contain_text("41 ms")
    await expect(attempts.nth(1)).to_contain_text("timed out after 10 s")
    await expect(attempts.nth(1)).to_contain_text("10003 ms")
    await expect(line).to_contain_text("bench-7")
    await page.screenshot(path=shots / "webhook-deliveries.png", full_page=True)
    await line.locator("button.redeliver").click()
    await expect(page.locator("#notice")).to_contain_text("queued again")
    await expect(page.locator(f"#deliveries tr[data-delivery='{delivery}'] .badge").first).to_have_text("pending")
    actions = [r["action"] for r in (await api.get("/api/audit", params={"action": "webhook.*"})).json()["data"]]
    assert "webhook.redeliver" in actions

    await page.click("[data-nav=webhooks]")
    asked: list[str] = []
    accept_next_dialog(page, asked)
    await page.locator(f"#webhooks tr[data-webhook='{hook['id']}'] button.delete").click()
    await expect(page.locator("#webhooks")).to_contain_text("No webhooks.")
    assert asked and "Delete the webhook" in asked[0]
    assert (await api.get("/api/webhooks")).json() == {"data": []}


async def test_a_refused_webhook_target_shows_the_reason(browser: Browser, base_url: str) -> None:
    page = await sign_in(browser, base_url)
    await page.goto(f"{base_url}/ui/#/webhooks")
    await page.fill("#webhook-url", "http://169.254.169.254/latest")
    await page.click("#create-webhook")
    await expect(page.get_by_role("alert")).to_contain_text("link-local")
    assert await page.locator("#webhook-secret").count() == 0


async def test_secrets_page_sets_a_value_that_never_shows_and_deletes(
    browser: Browser, base_url: str, api: httpx.AsyncClient, shots: Path
) -> None:
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=secrets]")
    await expect(page.locator("#secrets")).to_contain_text("No secrets.")
    await expect(page.locator("#secret-value")).to_have_attribute("type", "password")
    await page.fill("#secret-name", "DB_PASSWORD")
    await page.fill("#secret-value", SECRET_VALUE)
    await page.click("#save-secret")
    await expect(page.locator("#notice")).to_contain_text("Secret DB_PASSWORD saved")
    row = page.locator("#secrets tr[data-secret='DB_PASSWORD']")
    await expect(row).to_contain_text("admin")
    await expect(page.locator("#secret-value")).to_have_value("")
    assert SECRET_VALUE not in await page.content()
    values = await page.evaluate("[...document.querySelectorAll('input, textarea')].map((e) => e.value).join('|')")
    assert SECRET_VALUE not in values
    await page.fill("#secret-name", "lower")
    await page.fill("#secret-value", "x")
    await page.click("#save-secret")
    await expect(page.get_by_role("alert")).to_contain_text("A-Z, 0-9 and _")
    await page.fill("#secret-name", "TOKEN")
    await page.fill("#secret-value", SECRET_VALUE + "-2")
    await page.click("#save-secret")
    await expect(page.locator("#secrets tr[data-secret='TOKEN']")).to_be_visible()
    await page.screenshot(path=shots / "secrets.png")
    assert SECRET_VALUE not in await page.content()
    await page.reload()
    await expect(row).to_be_visible()
    assert SECRET_VALUE not in await page.content()
    assert [s["name"] for s in (await api.get("/api/secrets")).json()["data"]] == ["DB_PASSWORD", "TOKEN"]
    asked: list[str] = []
    accept_next_dialog(page, asked)
    await row.locator("button.delete").click()
    await expect(row).to_have_count(0)
    assert asked and "DB_PASSWORD" in asked[0]
    assert [s["name"] for s in (await api.get("/api/secrets")).json()["data"]] == ["TOKEN"]


async def test_a_viewer_sees_no_admin_entries_or_buttons_and_an_operator_only_names(
    browser: Browser, base_url: str, api: httpx.AsyncClient, user_token: Callable
) -> None:
    assert (await api.put("/api/secrets/API_KEY", json={"value": SECRET_VALUE})).status_code == 204
    made = await api.post("/api/webhooks", json={"url": "http://93.184.216.34/v", "events": ["job.failed"]})
    assert made.status_code == 201
    _, viewer = await user_token("vivian", "viewer")
    page = await sign_in(browser, base_url, viewer)
    for nav in ("webhooks", "secrets", "audit"):
        await expect(page.locator(f"[data-nav={nav}]")).to_be_hidden()
    await expect(page.locator("[data-nav=jobs]")).to_be_visible()
    for where in ("#/webhooks", "#/secrets", f"#/webhooks/{made.json()['id']}"):
        await page.goto(f"{base_url}/ui/{where}")
        await expect(page.locator("#needs-role")).to_be_visible()
        assert await page.locator("button.delete, #create-webhook, #save-secret, button.redeliver").count() == 0

    _, operator = await user_token("otto", "operator")
    page = await sign_in(browser, base_url, operator)
    await expect(page.locator("[data-nav=secrets]")).to_be_visible()
    await expect(page.locator("[data-nav=webhooks]")).to_be_hidden()
    await page.click("[data-nav=secrets]")
    await expect(page.locator("#secrets tr[data-secret='API_KEY']")).to_be_visible()
    assert await page.locator("button.delete, #save-secret, #secret-value").count() == 0
    assert SECRET_VALUE not in await page.content()


# ---------------------------------------------------------------- the Org page


async def test_org_page_saves_retention_and_quota_for_an_admin(
    browser: Browser, base_url: str, api: httpx.AsyncClient, shots: Path
) -> None:
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=org]")
    await expect(page.locator("#retention-updated")).to_contain_text("kept forever")
    await expect(page.locator("#retention-logs")).to_have_value("")
    await page.fill("#retention-logs", "30")
    await page.fill("#retention-artifacts", "90")
    await page.click("#save-retention")
    await expect(page.locator("#notice")).to_contain_text("Retention saved")
    await expect(page.locator("#retention-updated")).to_contain_text("by admin")
    got = (await api.get("/api/org/retention")).json()
    assert (got["logs_days"], got["artifacts_days"], got["jobs_days"]) == (30, 90, None)

    await page.fill("#quota-storage", "10G")
    await page.fill("#quota-transcript", "1M")
    await expect(page.locator("#quota")).to_contain_text("= 10.0 GiB")
    await page.click("#save-quota")
    await expect(page.locator("#notice")).to_contain_text("Quota saved")
    got = (await api.get("/api/org/quota")).json()
    assert (got["storage_bytes"], got["transcript_cap_bytes"]) == (10 << 30, 1 << 20)
    await expect(page.locator("#usage")).to_contain_text("of 10.0 GiB")
    await expect(page.locator("#usage .meter")).to_be_visible()
    await page.screenshot(path=shots / "org.png", full_page=True)

    await page.fill("#quota-storage", "10X")
    await page.click("#save-quota")
    await expect(page.get_by_role("alert")).to_contain_text("is not a size")
    await page.fill("#quota-storage", "")
    await page.fill("#retention-logs", "0")  # the API's refusal, in its words
    await page.click("#save-retention")
    await expect(page.get_by_role("alert")).to_contain_text("logs_days")
    assert (await api.get("/api/org/retention")).json()["logs_days"] == 30
    await page.reload()
    await expect(page.locator("#retention-logs")).to_have_value("30")
    await expect(page.locator("#quota-storage")).to_have_value("10G")
    await expect(page.locator("#quota-transcript")).to_have_value("1M")


async def test_org_page_is_read_only_for_a_viewer(
    browser: Browser, base_url: str, api: httpx.AsyncClient, user_token: Callable
) -> None:
    assert (await api.put("/api/org/retention", json={"logs_days": 14})).status_code == 200
    _, viewer = await user_token("vivian", "viewer")
    page = await sign_in(browser, base_url, viewer)
    await page.click("[data-nav=org]")
    await expect(page.locator("#read-only")).to_be_visible()
    await expect(page.locator("#retention-logs")).to_have_value("14")
    for field in ("#retention-logs", "#retention-artifacts", "#retention-jobs", "#quota-storage", "#quota-transcript"):
        await expect(page.locator(field)).to_be_disabled()
    assert await page.locator("#save-retention, #save-quota").count() == 0
    await expect(page.locator("#usage")).to_contain_text("no quota")


# ---------------------------------------------------------------- a job's outputs


async def test_delete_outputs_from_the_job_page_then_the_reason_shows_where_they_were(
    app: FastAPI,
    browser: Browser,
    base_url: str,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    user_token: Callable,
    shots: Path,
) -> None:
    job = await ended_job(db)
    body = b"measured 3.30 V\n"
    sha = hashlib.sha256(body).hexdigest()
    app.state.storage.put(artifact_key(job, "report.txt"), io.BytesIO(body), sha)
    await db.execute(Q.insert_artifact, job, DEFAULT_ORG, "report.txt", artifact_key(job, "report.txt"), len(body), sha)
    running = await ended_job(db, end=False)

    _, viewer = await user_token("vivian", "viewer")
    page = await sign_in(browser, base_url, viewer)
    await page.goto(f"{base_url}/ui/#/jobs/{job}")
    await expect(page.locator("#artifacts a.artifact")).to_have_text("report.txt")
    assert await page.locator("#delete-outputs").count() == 0  # not the viewer's to delete

    page = await sign_in(browser, base_url)
    await page.goto(f"{base_url}/ui/#/jobs/{running}")
    await expect(page.locator("h1 .badge")).to_have_text("queued")
    assert await page.locator("#delete-outputs").count() == 0  # not ended yet
    await page.goto(f"{base_url}/ui/#/jobs/{job}")
    await expect(page.locator("#log .line")).to_have_count(2)
    await expect(page.locator("#artifacts a.artifact")).to_have_text("report.txt")
    asked: list[str] = []
    accept_next_dialog(page, asked)
    await page.click("#delete-outputs")
    await expect(page.locator("#notice")).to_contain_text("Outputs deleted")
    assert asked and "cannot be undone" in asked[0]
    await expect(page.locator("#log-gone")).to_contain_text(f"the outputs of job {job} were deleted by admin")
    await expect(page.locator("#artifacts-gone")).to_contain_text("deleted by admin")
    await expect(page.locator("#transcript")).to_be_hidden()
    assert await page.locator("#delete-outputs").count() == 0
    await page.screenshot(path=shots / "job-outputs-deleted.png", full_page=True)
    await page.reload()  # from a fresh load too, and no stream is opened for a deleted transcript
    await expect(page.locator("#log-gone")).to_contain_text("deleted by admin")
    await expect(page.locator("#artifacts-gone")).to_contain_text("deleted by admin")
    await expect(page.locator("#live")).to_have_text("")
    assert (await api.get(f"/api/jobs/{job}/logs")).status_code == 410
