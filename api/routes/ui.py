"""The dashboard: static files under /ui/ (api/ui: HTML, JavaScript modules, CSS; no build step,
no CDN), served by the API itself so the page and the API share an origin (the session cookie
and EventSource need that). Every page is the one index.html; the modules route by the URL hash."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent.parent / "ui"


def mount(app: FastAPI) -> None:
    """Serve /ui/ from the package, and send / there."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
