"""Attack probes against issue 12's dashboard files (/ui/) and the offline Swagger UI (/docs).

Path traversal in every spelling a URL allows, content types, caching, framing and script
policy headers, and a read of the page's JavaScript for markup built from data."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from boxrun.api.routes.ui import UI_DIR
from tests.api.conftest import BASE_URL

SECRET_MARKERS = ("test-admin-token", "s3_secret", "database_url", "postgresql://", "[project]", "def create_app")


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        yield client


def _raw_get(app: FastAPI, raw_path: bytes) -> httpx.Request:
    """A GET whose path goes to the app byte for byte (httpx would normalise `..` and `%2e%2e`)."""
    return httpx.Request("GET", httpx.URL(BASE_URL).copy_with(raw_path=raw_path))


TRAVERSALS = [
    b"/ui/../pyproject.toml",
    b"/ui/../../pyproject.toml",
    b"/ui/%2e%2e/app.py",
    b"/ui/%2E%2E/%2E%2E/settings.py",
    b"/ui/..%2fapp.py",
    b"/ui/..%2Fapi%2Fapp.py",
    b"/ui/%2e%2e%2fapp.py",
    b"/ui/..%5capp.py",
    b"/ui/..\\app.py",
    b"/ui/%5c..%5capp.py",
    b"/ui//etc/passwd",
    b"/ui/%2fetc%2fpasswd",
    b"/ui/%2Fetc%2Fpasswd",
    b"/ui/index.html%00.js",
    b"/ui/%00",
    b"/ui/app.js%00",
    b"/ui/....//app.py",
    b"/ui/.%2e/app.py",
    b"/ui/%252e%252e/app.py",
    b"/ui/%c0%ae%c0%ae/app.py",
    b"/ui/C:%5cWindows",
    b"/ui/file:///etc/passwd",
    b"/ui/~root/.bashrc",
    b"/ui/.git/config",
    b"/ui/__pycache__/",
    b"/docs/assets/../../api/app.py",
    b"/docs/assets/%2e%2e/README.md",
    b"/docs/assets/..%2f..%2fapp.py",
    b"/docs/assets//etc/passwd",
    b"/docs/assets/%00",
]


@pytest.mark.parametrize("raw", TRAVERSALS, ids=[t.decode("latin-1") for t in TRAVERSALS])
async def test_no_path_reaches_outside_the_served_directories(browser: httpx.AsyncClient, raw: bytes) -> None:
    resp = await browser.send(_raw_get(browser._transport.app, raw))  # type: ignore[attr-defined]
    assert resp.status_code < 500, (raw, resp.status_code)
    if resp.status_code == 200:  # only the dashboard's own index (a path the SPA may land on) or an asset
        index = (UI_DIR / "index.html").read_bytes()
        assert resp.content == index or raw.startswith(b"/docs/assets/") and b"swagger" in resp.content.lower(), raw
    for marker in SECRET_MARKERS:
        assert marker not in resp.text, (raw, marker)
    assert "Traceback" not in resp.text


async def test_a_symlink_out_of_the_ui_directory_is_not_followed(browser: httpx.AsyncClient) -> None:
    """Someone (a packager, a careless deploy) leaves a symlink in api/ui pointing out of it."""
    link = UI_DIR / "zz-attack-link.txt"
    target = Path(__file__).resolve()  # a file outside api/ui
    link.symlink_to(target)
    try:
        resp = await browser.get("/ui/zz-attack-link.txt")
        assert resp.status_code == 404, resp.status_code
        assert "SECRET_MARKERS" not in resp.text
    finally:
        link.unlink()


@pytest.mark.parametrize(
    ("path", "mime"),
    [
        ("/ui/", "text/html"),
        ("/ui/index.html", "text/html"),
        ("/ui/app.js", "javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
        ("/docs/assets/swagger-ui-bundle.js", "javascript"),
        ("/docs/assets/swagger-ui.css", "text/css"),
    ],
)
async def test_files_are_served_with_their_content_type(browser: httpx.AsyncClient, path: str, mime: str) -> None:
    resp = await browser.get(path)
    assert resp.status_code == 200, path
    assert mime in resp.headers["content-type"], (path, resp.headers["content-type"])


async def test_the_dashboard_cannot_be_framed_or_sniffed(browser: httpx.AsyncClient) -> None:
    """Clickjacking: the dashboard has Cancel and maintenance buttons; a page of another site must
    not frame it (SameSite=Strict keeps the cookie out of a cross-site frame today, but a same-site
    sibling, e.g. another app under the same registrable domain, would get it)."""
    for path in ("/ui/", "/ui/index.html", "/ui/app.js"):
        resp = await browser.get(path)
        assert resp.headers.get("x-content-type-options") == "nosniff", path
        if path.endswith("/") or path.endswith(".html"):
            assert resp.headers.get("x-frame-options", "").upper() == "DENY", path
            csp = resp.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in csp, (path, csp)
            assert "script-src 'self'" in csp, csp  # no inline script, no other origin
            assert "object-src 'none'" in csp, csp


async def test_the_page_is_revalidated_so_a_deploy_takes_effect(browser: httpx.AsyncClient) -> None:
    """index.html and the modules must not be cached for good (no far-future max-age): a fixed
    dashboard would otherwise keep running the old code. ETag/Last-Modified allow a 304."""
    resp = await browser.get("/ui/")
    cache = resp.headers.get("cache-control", "")
    assert "immutable" not in cache
    assert "max-age" not in cache or "max-age=0" in cache or "no-cache" in cache, cache
    assert resp.headers.get("etag") or resp.headers.get("last-modified")
    again = await browser.get("/ui/", headers={"If-None-Match": resp.headers.get("etag", "")})
    assert again.status_code in (200, 304)


async def test_ui_answers_a_post_or_a_bad_method_without_a_500(browser: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        resp = await browser.request(method, "/ui/index.html")
        assert resp.status_code in (404, 405), (method, resp.status_code)


async def test_no_open_redirect_from_the_root_or_ui(browser: httpx.AsyncClient) -> None:
    for raw in (b"/ui", b"//evil.example/", b"/ui//evil.example", b"/%2F%2Fevil.example", b"/ui/%2F%2Fevil.example"):
        resp = await browser.send(_raw_get(browser._transport.app, raw))  # type: ignore[attr-defined]
        location = resp.headers.get("location", "")
        assert "evil.example" not in location.split("/ui", 1)[0], (raw, location)
        assert not location.startswith("//"), (raw, location)


async def test_docs_serves_no_cdn_url(browser: httpx.AsyncClient) -> None:
    resp = await browser.get("/docs")
    assert resp.status_code == 200
    assert not re.search(r"https?://(cdn|unpkg|fonts)\.", resp.text), resp.text[:500]
    assert "test-admin-token" not in resp.text


# ---------------------------------------------------------------- the page's JavaScript

SINKS = re.compile(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function\(")


def test_the_dashboard_js_builds_no_markup_from_strings() -> None:
    """User content (scripts, log lines, labels, box names, error reasons) reaches the DOM only as
    text: api/ui/ui.js's h() appends strings as text nodes and ansi.js sets textContent. No module
    may use an HTML sink."""
    found = []
    for js in sorted(UI_DIR.glob("*.js")):
        for n, line in enumerate(js.read_text().splitlines(), 1):
            if SINKS.search(line):
                found.append(f"{js.name}:{n}: {line.strip()}")
    assert not found, found


def test_no_attribute_takes_an_event_handler_or_url_from_data() -> None:
    """h() sets attributes with setAttribute: an `on...` name or an `href` built from API data
    could run script (`javascript:` URL). Every href is a fixed `#/...` route or a same-origin
    /api path built from ids, or the server-made temporal_ui_url."""
    allowed = re.compile(
        r"href: (`#/[^`]*`|\"#/[a-z]*\"|`\$\{path\}/[^`]*`|job\.temporal_ui_url|p\.temporal_ui_url|\"/docs\"|templateHref)"
    )
    # templateHref (api/ui/templates.js) is a fixed `#/templates/` route with the name encoded
    defined = (UI_DIR / "templates.js").read_text()
    assert "export const templateHref = (name, version) => `#/templates/${encodeURIComponent(name)}" in defined
    bad = []
    for js in sorted(UI_DIR.glob("*.js")):
        for n, line in enumerate(js.read_text().splitlines(), 1):
            for m in re.finditer(r"href: (`[^`]*`|\"[^\"]*\"|[\w.]+)", line):
                if not allowed.match(m.group(0)):
                    bad.append(f"{js.name}:{n}: {m.group(0)}")
    assert not bad, bad


async def test_docs_cannot_be_framed(browser: httpx.AsyncClient) -> None:
    resp = await browser.get("/docs")
    assert resp.headers.get("x-frame-options", "").upper() == "DENY"
    assert "frame-ancestors 'none'" in resp.headers.get("content-security-policy", "")
    assert resp.headers.get("x-content-type-options") == "nosniff"


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=99999999-"},
        {"Range": "bytes=5-1"},
        {"Range": "bytes=-0"},
        {"Range": "bytes=" + ",".join(f"{i}-{i}" for i in range(2000))},
        {"Range": "bytes=0-0,0-0,0-0,0-0"},
        {"Range": "pages=1-2"},
        {"Range": "bytes=\x00"},
        {"If-None-Match": "\x00" * 10},
        {"If-Modified-Since": "not a date"},
        {"If-Modified-Since": "Mon, 01 Jan 99999 00:00:00 GMT"},
        {"If-Range": "garbage", "Range": "bytes=0-1"},
    ],
)
async def test_odd_conditional_and_range_headers_on_ui_files(browser: httpx.AsyncClient, headers: dict) -> None:
    resp = await browser.get("/ui/app.js", headers=headers)
    assert resp.status_code in (200, 206, 304, 400, 416), (headers, resp.status_code)
    assert len(resp.content) <= 2 * (UI_DIR / "app.js").stat().st_size + 200_000  # no amplification
