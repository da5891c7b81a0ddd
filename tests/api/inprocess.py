"""The API in-process on the real parts (Postgres, Temporal, S3 from tests/conftest.py): the app
with its lifespan started, and an httpx client on it through ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from boxrun.api.app import create_app
from boxrun.settings import Settings

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def app_settings(settings: Settings, temporal_env: WorkflowEnvironment, **overrides: object) -> Settings:
    """The test's settings, pointed at the session's Temporal, with a known admin token."""
    return settings.model_copy(
        update={
            "temporal_address": temporal_env.client.service_client.config.target_host,
            "api_token": ADMIN_TOKEN,
            **overrides,
        }
    )


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the running app (no auth header: each test sends its own)."""
    async with running_app(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
