"""The dashboard's pages in headless Chromium: sign in, the jobs list with live badges, a job's
page following its log live (SSE with the session cookie) with stdout/stderr apart and ANSI
colours, an artifact download, Cancel, a viewer without Cancel, submitting from the form, boxes,
a pipeline's DAG, the audit page, sign-out."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
from fastapi import FastAPI
from playwright.async_api import Browser, Page, expect

from boxrun import logbatch
from boxrun.constants import DEFAULT_ORG
from boxrun.db import Q
from tests.api.conftest import ADMIN_TOKEN
from tests.api.helpers import Box
from tests.api.test_agent import BATCH, claimed_job
from tests.api.test_pipelines import diamond

TIMEOUT_MS = 10_000


def lines(first_seq: int, *runs: tuple[str, str]) -> bytes:
    """A log batch: (stream, text) per line."""
    data = "".join(f"{text}\n" for _, text in runs).encode()
    return logbatch.encode(first_seq, [(1, stream, time.time()) for stream, _ in runs], data)


async def sign_in(browser: Browser, base_url: str, token: str = ADMIN_TOKEN) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(f"{base_url}/ui/")
    await page.fill("#token", token)
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#jobs")).to_be_visible()
    return page


async def test_sign_in_sets_the_session_and_sign_out_ends_it(browser: Browser, base_url: str, shots: Path) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(f"{base_url}/")  # / leads to the dashboard
    await page.fill("#token", "brt_wrong")
    await page.click("#signin button[type=submit]")
    await expect(page.get_by_role("alert")).to_contain_text("invalid token")
    await page.screenshot(path=shots / "signin.png")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#who")).to_contain_text("admin")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["boxrun_session"]["httpOnly"] and cookies["boxrun_session"]["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # the page's script cannot read it
    await page.reload()  # the session outlives a reload
    await expect(page.locator("#who")).to_contain_text("admin")
    await page.click("#signout")
    await expect(page.locator("#signin")).to_be_visible()
    await page.goto(f"{base_url}/ui/#/jobs")
    await expect(page.locator("#signin")).to_be_visible()


async def test_a_job_page_follows_the_log_live_and_cancel_works(
    app: FastAPI,
    browser: Browser,
    base_url: str,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    make_box: Callable,
    shots: Path,
) -> None:
    box: Box = await make_box("bench-1")
    job = await claimed_job(api, db, box)  # running on bench-1, its agent played by the test
    ingest = f"/api/agent/jobs/{job}/logs"
    assert (await box.agent.post(ingest, content=lines(1, ("stdout", "booting")), headers=BATCH)).status_code == 200
    page = await sign_in(browser, base_url)
    row = page.locator(f"#jobs tr[data-job='{job}']")
    await expect(row.locator(".badge")).to_have_text("running")
    await page.screenshot(path=shots / "jobs.png")
    await row.click()
    log = page.locator("#log")
    await expect(log.locator(".line")).to_have_count(1)
    # lines written after the page opened arrive through the stream
    more = lines(2, ("stdout", "\x1b[32mPASS\x1b[0m voltage ok"), ("stderr", "warning: fan slow"), ("stdout", "done"))
    assert (await box.agent.post(ingest, content=more, headers=BATCH)).status_code == 200
    await expect(log.locator(".line")).to_have_count(4)
    await expect(log.locator(".line.stderr")).to_have_text("3warning: fan slow")
    await expect(log.locator(".line[data-seq='2'] .a-fg-32")).to_have_text("PASS")  # ANSI green
    await page.select_option("#stream-filter", "stderr")
    await expect(log.locator(".line:visible")).to_have_count(1)
    await page.select_option("#stream-filter", "all")
    temporal_ui = (await api.get(f"/api/jobs/{job}")).json()["temporal_ui_url"]
    await expect(page.locator("#temporal")).to_have_attribute("href", temporal_ui)
    await expect(page.locator("#spec")).to_contain_text('"script"')
    await page.screenshot(path=shots / "job.png", full_page=True)
    await page.click("#cancel")
    # no worker runs here to deliver it: the request is recorded, the state is the workflow's to change
    await expect(page.locator("#notice")).to_contain_text("Cancel requested")
    await expect(page.locator("#cancel")).to_be_disabled()
    actions = [r["action"] for r in (await api.get("/api/audit", params={"job_id": job})).json()["data"]]
    assert "job.cancel" in actions


async def test_an_artifact_downloads_from_the_job_page(
    app: FastAPI, browser: Browser, base_url: str, db: asyncpg.Connection, api: httpx.AsyncClient, make_box: Callable
) -> None:
    box: Box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    body = b"measured 3.30 V\n"
    sha = hashlib.sha256(body).hexdigest()
    key = f"artifacts/{job}/report.txt"
    app.state.storage.put(key, io.BytesIO(body), sha)
    await db.execute(Q.insert_artifact, job, DEFAULT_ORG, "out/report.txt", key, len(body), sha)
    page = await sign_in(browser, base_url)
    await page.goto(f"{base_url}/ui/#/jobs/{job}")
    link = page.locator("#artifacts a.artifact")
    await expect(link).to_have_text("out/report.txt")
    await expect(page.locator("#artifacts")).to_contain_text(sha)
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    assert Path(await download.path()).read_bytes() == body


async def test_a_viewer_sees_no_cancel_button(
    browser: Browser,
    base_url: str,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    make_box: Callable,
    user_token: Callable,
) -> None:
    box: Box = await make_box("bench-1")
    job = await claimed_job(api, db, box)
    _, token = await user_token("vivian", "viewer")
    page = await sign_in(browser, base_url, token)
    await expect(page.locator("#who")).to_contain_text("viewer")
    await page.goto(f"{base_url}/ui/#/jobs/{job}")
    await expect(page.locator("h1 .badge")).to_have_text("running")
    await expect(page.locator("#temporal")).to_be_visible()
    assert await page.locator("#cancel").count() == 0
    assert await page.locator("#rerun").count() == 0


async def test_submitting_from_the_form_opens_the_new_job(
    browser: Browser, base_url: str, api: httpx.AsyncClient, make_box: Callable, shots: Path, tmp_path: Path
) -> None:
    await make_box("bench-1", groups=("lab",))
    await make_box("bench-2", groups=("lab",))
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=new]")
    await expect(page.locator("#box option")).to_have_count(3)  # two boxes and their group
    await page.select_option("#box", "box:bench-2")
    await page.fill("#script", "#!/bin/sh\ncat fw.bin | wc -c\n")
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(bytes(range(256)) * 4)
    await page.set_input_files("#files", str(firmware))
    await page.fill("#env", "VOLTAGE=3.3")
    await page.fill("#timeout", "120")
    await page.check("#lock")
    await page.screenshot(path=shots / "new-job.png")
    await page.click("#submit")
    await page.wait_for_url("**/ui/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    job = (await api.get(f"/api/jobs/{job_id}")).json()
    assert (job["box"], job["timeout_s"], job["lock"]) == ("bench-2", 120, True)
    spec = (await api.get(f"/api/jobs/{job_id}/spec")).json()
    assert spec["env"] == {"VOLTAGE": "3.3"}
    sha = hashlib.sha256(firmware.read_bytes()).hexdigest()
    # uploaded, referenced by hash
    assert [(f["path"], f["size"], f["sha256"], f["from_job_id"]) for f in spec["files"]] == [
        ("fw.bin", 1024, sha, None)
    ]


async def test_boxes_pipelines_and_audit_pages(
    browser: Browser, base_url: str, api: httpx.AsyncClient, make_box: Callable, shots: Path
) -> None:
    await make_box("pbox")
    pipeline = (await api.post("/api/pipelines", json=diamond())).json()
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=boxes]")
    row = page.locator("#boxes tr[data-box='pbox']")
    await expect(row.locator(".badge").first).to_have_text("online")
    await row.locator("button").click()  # an admin toggles maintenance
    await expect(row.locator(".badge.maintenance")).to_be_visible()
    assert (await api.get("/api/boxes/pbox")).json()["maintenance"] is True
    await page.screenshot(path=shots / "boxes.png")
    await page.click("[data-nav=pipelines]")
    await page.click(f"a[href='#/pipelines/{pipeline['id']}']")
    nodes = page.locator("#dag g.node")
    await expect(nodes).to_have_count(len(pipeline["steps"]))
    assert await page.locator("#dag path[d^='M']").count() >= 4  # the diamond's edges
    await page.screenshot(path=shots / "pipeline.png")
    await page.click("[data-nav=audit]")
    await page.fill("input[name=action]", "box.*")
    await page.click("#audit ~ * button, form.filters button")
    await expect(page.locator("#audit tbody tr").first).to_contain_text("box.")
    await page.screenshot(path=shots / "audit.png")
