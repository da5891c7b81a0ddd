"""No token in any log line: the handlers setup_logging configures redact credentials, and `boxrun
api` sends uvicorn's own lines (a WebSocket URL with ?token=) through them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from boxrun.dev.procs import free_port
from boxrun.process_lifecycle import REDACTED, RedactSecrets, redact
from boxrun.settings import Settings
from tests.api.inprocess import ADMIN, ADMIN_TOKEN, app_settings
from tests.conftest import wait_for


@pytest.mark.parametrize(
    "line, secret",
    [
        ('127.0.0.1:5 - "WebSocket /api/jobs/1/logs/ws?token=s3cret-Tok_en" [accepted]', "s3cret-Tok_en"),
        ("GET /api/jobs/1/logs/ws?after=5&token=s3cret&x=1", "s3cret"),
        ("headers: {'authorization': 'Bearer s3cret.tok'}", "s3cret.tok"),
        ("Authorization: Basic czNjcmV0OnB3", "czNjcmV0OnB3"),
        ("registered box b1 with bxn_AbCdEf0123456789xyz", "bxn_AbCdEf0123456789xyz"),
        ("url=https://x/?node_token=s3cret", "s3cret"),
    ],
)
def test_redact_removes_every_credential(line, secret):
    clean = redact(line)
    assert secret not in clean and REDACTED in clean


def test_the_filter_redacts_arguments_and_tracebacks():
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s"', None, None)
    record.args = ("127.0.0.1:5", "/api/jobs/1/logs/ws?token=s3cret")
    try:
        raise ValueError("bad ?token=s3cret")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactSecrets().filter(record)
    assert "s3cret" not in logging.Formatter().format(record)


def _env(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOXRUN_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"BOXRUN_{name.upper()}"] = str(value)
    env.update(BOXRUN_API_PORT=str(port), BOXRUN_API_HOST="127.0.0.1", BOXRUN_LOG_LEVEL="INFO")
    return env


async def test_boxrun_api_logs_websocket_urls_without_their_token(
    settings: Settings, temporal_env: WorkflowEnvironment, tmp_path: Path
):
    port = free_port()
    log_path = tmp_path / "api.log"
    boxrun = Path(sys.executable).parent / "boxrun"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(boxrun), "api", env=_env(app_settings(settings, temporal_env), port), stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as api:

            async def healthy() -> bool:
                try:
                    return (await api.get("/api/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(healthy, timeout=60, what=f"boxrun api to serve:\n{log_path.read_text()}")
            resp = await api.post("/api/jobs", json={"box_group": "nobody", "script": "true"}, headers=ADMIN)
            assert resp.status_code == 201, resp.text
            job_id = resp.json()["id"]

        url = f"ws://127.0.0.1:{port}/api/jobs/{job_id}/logs/ws?after=0&token={ADMIN_TOKEN}"
        async with ws_connect(url):
            pass  # accepted: uvicorn logs the URL
        with pytest.raises(InvalidStatus):  # refused before accept: uvicorn logs the URL too
            async with ws_connect(url.replace(ADMIN_TOKEN, "wrong-s3cret-token")):
                pass
        await wait_for(lambda: "[accepted]" in log_path.read_text(), timeout=10, what="the accepted line")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=30)
    text = log_path.read_text()
    assert f"logs/ws?after=0&token={REDACTED}" in text, text
    assert ADMIN_TOKEN not in text and "wrong-s3cret-token" not in text, text
