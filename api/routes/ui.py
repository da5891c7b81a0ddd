"""The dashboard: static files under /ui/ (api/ui: HTML, JavaScript modules, CSS; no build step,
no CDN), served by the API itself so the page and the API share an origin (the session cookie
and EventSource need that). Every page is the one index.html; the modules route by the URL hash.

Every answer under /ui/ carries the headers that keep the page to itself: no framing by another
page (clickjacking the Cancel and maintenance buttons), script only from this origin (the
modules build the DOM from text, never from markup: a policy is the second lock), no MIME
sniffing, no referrer to the Temporal UI links, and `Cache-Control: no-cache` so a browser
revalidates (ETag) and an upgraded API serves its new page at once."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

# Inline `style` attributes are set by the modules (h(..., {style})), hence style-src
# 'unsafe-inline'; scripts, connections (fetch, EventSource) and images stay on this origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
UI_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Hardened:
    """An ASGI wrapper adding UI_HEADERS to every answer of the app it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in UI_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_hardened)


def mount(app: FastAPI) -> None:
    """Serve /ui/ from the package, and send / there."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", Hardened(StaticFiles(directory=UI_DIR, html=True)), name="ui")
