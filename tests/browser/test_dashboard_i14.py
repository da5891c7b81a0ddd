"""The dashboard pages of issue 14 in headless Chromium: Templates (the list; one template with its
params, spec and versions; a Run form typed by the params that lands on the new job's or
pipeline's page; for admins the trigger secret behind "Show", the trigger URL and Rotate),
Schedules (create from a template, cron and params; pause, unpause, delete), "from template NAME
vN" on a job's and a pipeline's page, a box's holds on the Boxes page, and what a viewer sees (no
Run form, no admin buttons, no trigger secret anywhere in the page's HTML)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, expect

from tests.browser.test_dashboard import sign_in
from tests.browser.test_dashboard_i13 import accept_next_dialog

FLASH: dict[str, Any] = {
    "description": "flash a board on the bench",
    "params": {
        "board": {"type": "string", "required": True, "description": "the board's serial"},
        "image": {"type": "choice", "choices": ["stable", "nightly"], "default": "stable"},
        "retries": {"type": "int", "default": 2},
        "verbose": {"type": "bool", "default": False},
    },
    "job": {
        "box": "bench1",
        "script": "flash ${{ params.board }} ${{ params.image }} -r ${{ params.retries }} v=${{ params.verbose }}",
    },
}
BENCH: dict[str, Any] = {
    "description": "flash then test on one bench",
    "params": {"board": {"type": "string", "default": "b1"}},
    "pipeline": {
        "name": "bench-${{ params.board }}",
        "steps": {
            "flash": {"box": "bench1", "keep_box": True, "script": "echo flash ${{ params.board }}"},
            "test": {"needs": ["flash"], "same_box_as": "flash", "script": "echo test"},
        },
    },
}


@pytest.fixture
async def templates(make_box: Callable[..., Any], api: httpx.AsyncClient) -> str:
    """bench1, template `flash` (v1, then v2 with a lock) and template `bench` (a pipeline);
    flash's trigger secret."""
    await make_box("bench1")
    for name, body in (("flash", FLASH), ("flash", {**FLASH, "job": {**FLASH["job"], "lock": True}}), ("bench", BENCH)):
        resp = await api.put(f"/api/templates/{name}", json=body)
        assert resp.status_code in (200, 201), resp.text
    secret: str = (await api.get("/api/templates/flash")).json()["trigger_secret"]
    return secret


async def test_templates_page_shows_versions_and_runs_a_job_with_typed_params(
    browser: Browser, base_url: str, api: httpx.AsyncClient, templates: str, shots: Path
) -> None:
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=templates]")
    rows = page.locator("#templates tbody tr")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#templates tr[data-template=flash]")).to_contain_text("v2")
    await expect(page.locator("#templates tr[data-template=flash]")).to_contain_text("board, image, retries, verbose")
    await page.screenshot(path=shots / "templates.png")

    await page.click("#templates tr[data-template=flash] a")
    await expect(page.locator("h1")).to_contain_text("v2")
    await expect(page.locator("#params tbody tr")).to_have_count(4)
    await expect(page.locator("#params tr[data-param=image]")).to_contain_text("stable | nightly")
    await expect(page.locator("#params tr[data-param=board]")).to_contain_text("required")
    await expect(page.locator("#spec")).to_contain_text('"lock": true')
    await page.select_option("#version", "1")  # an old version by ?version=1
    await expect(page.locator("h1")).to_contain_text("v1")
    assert page.url.endswith("#/templates/flash?version=1")
    await expect(page.locator("#spec")).not_to_contain_text('"lock"')
    await expect(page.locator("#run")).to_have_text("Run v1")
    # one field per param, by type
    assert await page.locator("#param-board").get_attribute("type") == "text"
    assert await page.locator("#param-retries").get_attribute("type") == "number"
    assert await page.locator("#param-verbose").get_attribute("type") == "checkbox"
    assert await page.locator("#param-image").evaluate("e => e.tagName") == "SELECT"
    await expect(page.locator("#param-image")).to_have_value("stable")
    await expect(page.locator("#param-retries")).to_have_value("2")
    await page.screenshot(path=shots / "template.png", full_page=True)

    await page.click("#run")  # board is required: the browser asks before anything is sent
    assert await page.locator("#param-board").evaluate("e => !e.validity.valid")
    await page.fill("#param-board", "b7")
    await page.select_option("#param-image", "nightly")
    await page.fill("#param-retries", "4")
    await page.check("#param-verbose")
    await page.click("#run")
    await expect(page.locator("h1 .badge")).to_have_text("queued")
    job_id = page.url.rsplit("/", 1)[1]
    spec = (await api.get(f"/api/jobs/{job_id}/spec")).json()
    assert spec["script"] == "flash b7 nightly -r 4 v=true" and not spec.get("lock")
    link = page.locator("#from-template a")  # the API marks the job with its template
    await expect(link).to_have_text("flash v1")
    await link.click()
    await expect(page.locator("h1")).to_contain_text("v1")
    assert page.url.endswith("#/templates/flash?version=1")


async def test_a_pipeline_template_runs_to_the_pipelines_page_and_refusals_show(
    browser: Browser, base_url: str, templates: str
) -> None:
    page = await sign_in(browser, base_url)
    await page.goto(f"{base_url}/ui/#/templates/bench")
    await expect(page.locator("#param-board")).to_have_value("b1")
    await page.fill("#param-board", "${{ secrets.X }}")  # refused by the API: its reason shows
    await page.click("#run")
    await expect(page.get_by_role("alert")).to_contain_text("${{")
    await page.fill("#param-board", "b9")
    await page.click("#run")
    await expect(page.locator("#dag")).to_be_visible()
    await expect(page.locator("h1")).to_contain_text("bench-b9")
    await expect(page.locator("#from-template a")).to_have_text("bench v1")


async def test_the_trigger_secret_is_behind_show_and_rotates(
    browser: Browser, base_url: str, api: httpx.AsyncClient, templates: str
) -> None:
    page = await sign_in(browser, base_url)
    await page.goto(f"{base_url}/ui/#/templates/flash")
    await expect(page.locator("#trigger-url")).to_have_text(f"{base_url}/api/templates/flash/trigger")
    await expect(page.locator("#trigger-secret-slot")).to_have_text("hidden")
    assert templates not in await page.content()  # not in the page until asked for
    await page.click("#show-secret")
    await expect(page.locator("#trigger-secret")).to_have_value(templates)
    await page.click("#show-secret")  # Hide
    assert templates not in await page.content()
    asked: list[str] = []
    accept_next_dialog(page, asked)
    await page.click("#rotate-secret")
    await expect(page.locator("#notice")).to_contain_text("A new trigger secret")
    assert asked and "refused from now on" in asked[0]
    rotated = (await api.get("/api/templates/flash")).json()["trigger_secret"]
    assert rotated != templates
    await page.click("#show-secret")
    await expect(page.locator("#trigger-secret")).to_have_value(rotated)


async def test_schedules_page_creates_pauses_and_deletes(
    browser: Browser, base_url: str, api: httpx.AsyncClient, templates: str, shots: Path
) -> None:
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=schedules]")
    await expect(page.locator("#schedules")).to_contain_text("No schedules.")
    await page.select_option("#schedule-template", "flash")
    await expect(page.locator("#schedule-params #param-board")).to_be_visible()
    await page.select_option("#schedule-version", "2")
    await page.fill("#schedule-cron", "0 3 * * *")
    await page.fill("#param-board", "nightly-board")
    await page.fill("#param-retries", "3")
    await page.click("#create-schedule")
    await expect(page.locator("#notice")).to_contain_text("Scheduled flash on 0 3 * * *")
    (made,) = (await api.get("/api/schedules")).json()["data"]
    assert made["params"] == {"board": "nightly-board", "image": "stable", "retries": 3, "verbose": False}
    assert made["version"] == 2 and made["cron"] == "0 3 * * *"
    row = page.locator(f"#schedules tr[data-schedule='{made['id']}']")
    await expect(row).to_contain_text("flash v2")
    await expect(row.locator(".badge")).to_have_text("active")
    shown = (await api.get(f"/api/schedules/{made['id']}")).json()
    assert len(shown["next_runs"]) >= 3  # the API's next run times: the first three show
    await expect(row.locator(".next-runs div")).to_have_count(3)
    await page.screenshot(path=shots / "schedules.png", full_page=True)

    await page.fill("#schedule-cron", "every day")  # Temporal's reason, in the API's words
    await page.click("#create-schedule")
    await expect(page.get_by_role("alert")).to_contain_text("cron")

    await row.locator("button.pause").click()
    await expect(row.locator(".badge")).to_have_text("paused")
    assert (await api.get(f"/api/schedules/{made['id']}")).json()["paused"] is True
    await row.locator("button.unpause").click()
    await expect(row.locator(".badge")).to_have_text("active")
    asked: list[str] = []
    accept_next_dialog(page, asked)
    await row.locator("button.delete").click()
    await expect(page.locator("#schedules")).to_contain_text("No schedules.")
    assert asked and "Delete the schedule of flash" in asked[0]
    assert (await api.get("/api/schedules")).json() == {"data": []}


async def test_a_viewer_sees_no_run_form_no_admin_buttons_and_no_trigger_secret(
    browser: Browser, base_url: str, api: httpx.AsyncClient, templates: str, user_token: Callable
) -> None:
    resp = await api.post("/api/schedules", json={"template": "flash", "cron": "@daily", "params": {"board": "b1"}})
    assert resp.status_code == 201, resp.text
    _, viewer = await user_token("vivian", "viewer")
    page = await sign_in(browser, base_url, viewer)
    await page.click("[data-nav=templates]")
    await expect(page.locator("#templates tbody tr")).to_have_count(2)
    await page.click("#templates tr[data-template=flash] a")
    await expect(page.locator("#params tbody tr")).to_have_count(4)
    await expect(page.locator("#spec")).to_contain_text("flash ${{ params.board }}")
    for admin_only in ("#run-form", "#run", "#trigger", "#show-secret", "#rotate-secret", "#trigger-url"):
        assert await page.locator(admin_only).count() == 0, admin_only
    html = await page.content()
    assert templates not in html and "trigger_secret" not in html

    await page.click("[data-nav=schedules]")
    row = page.locator(f"#schedules tr[data-schedule='{resp.json()['id']}']")
    await expect(row).to_contain_text("@daily")
    assert await row.locator("button").count() == 0
    assert await page.locator("#new-schedule").count() == 0
    assert templates not in await page.content()

    # an operator runs templates and makes schedules, but changes only its own schedules
    _, operator = await user_token("olga", "operator")
    page = await sign_in(browser, base_url, operator)
    await page.goto(f"{base_url}/ui/#/templates/flash")
    await expect(page.locator("#run-form")).to_be_visible()
    assert await page.locator("#trigger").count() == 0 and templates not in await page.content()
    await page.goto(f"{base_url}/ui/#/schedules")
    await expect(page.locator("#new-schedule")).to_be_visible()
    assert await page.locator(f"#schedules tr[data-schedule='{resp.json()['id']}'] button").count() == 0


async def test_the_boxes_page_shows_a_pipelines_hold(
    browser: Browser, base_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, templates: str
) -> None:
    resp = await api.post("/api/templates/bench/run", json={"params": {"board": "b3"}})
    assert resp.status_code == 201, resp.text
    pid = resp.json()["pipeline"]["id"]
    await db.execute(  # the hold the pipeline takes once flash ended (as its activity records it)
        "INSERT INTO box_holds (org_id, box_id, pipeline_id, step, steps)"
        " SELECT org_id, id, $1, 'flash', ARRAY['flash', 'test'] FROM boxes WHERE name = 'bench1'",
        pid,
    )
    page = await sign_in(browser, base_url)
    await page.click("[data-nav=boxes]")
    hold = page.locator(f"#boxes tr[data-box=bench1] [data-hold='{pid}']")
    await expect(hold).to_contain_text(f"{pid[:8]} after flash")
    await expect(hold).to_contain_text("since")
    await hold.locator("a").click()
    await expect(page.locator("h1")).to_contain_text("bench-b3")
