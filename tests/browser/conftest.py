"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright
for Python; no browser download) on the API served by uvicorn in the test's event loop, on the
real Postgres, Temporal and S3 of tests/conftest.py. No worker runs: a job runs because the test
plays its agent through the agent API (claim, log batches), as tests/api/test_agent.py does.

Screenshots of each page go to $BOXRUN_SCREENSHOTS (docs/screenshots/ when regenerating them:
`BOXRUN_SCREENSHOTS=docs/screenshots pytest tests/browser`), else to the test's tmp dir."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.api.conftest import anon, api, app, as_token, db, make_box
from tests.api.test_revocation import base_url, user_token

__all__ = ["anon", "api", "app", "as_token", "base_url", "db", "make_box", "user_token"]  # fixtures re-used


@pytest.fixture
async def browser(base_url: str) -> AsyncIterator[Browser]:  # closed before the server stops
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go."""
    out = Path(os.environ.get("BOXRUN_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out
