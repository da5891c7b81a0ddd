"""/docs works without the network: the Swagger UI page names only the API's own URLs, and the
API serves the JS and CSS it needs from the package (api/docs_assets)."""

from __future__ import annotations

import re

import httpx


async def test_docs_page_loads_its_assets_from_the_api_itself(anon: httpx.AsyncClient) -> None:
    page = await anon.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    remote = [u for u in urls if re.match(r"^(https?:)?//", u)]
    assert not remote, f"/docs loads from elsewhere: {remote}"
    for asset, kind in (
        ("/docs/assets/swagger-ui-bundle.js", "javascript"),
        ("/docs/assets/swagger-ui.css", "text/css"),
        ("/docs/assets/favicon-32x32.png", "image/png"),
    ):
        assert asset in page.text
        resp = await anon.get(asset)
        assert resp.status_code == 200, asset
        assert kind in resp.headers["content-type"], (asset, resp.headers["content-type"])
        assert len(resp.content) > 500
    assert "SwaggerUIBundle" in (await anon.get("/docs/assets/swagger-ui-bundle.js")).text
    assert (await anon.get("/openapi.json")).status_code == 200
    assert (await anon.get("/docs/oauth2-redirect")).status_code == 200


async def test_docs_assets_serve_only_what_ships(anon: httpx.AsyncClient) -> None:
    assert (await anon.get("/docs/assets/nothing.js")).status_code == 404
    assert (await anon.get("/docs/assets/../app.py")).status_code == 404
    assert (await anon.get("/redoc")).status_code == 404  # ReDoc loads from a CDN only: not served
