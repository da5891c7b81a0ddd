"""Secrets through the SDK (AsyncClient over the in-process app) and the CLI (`boxrun secrets`):
values go in, names come out, and no value is ever printed."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun.errors import Forbidden, InvalidInput, NotFound
from boxrun.sdk.aio import AsyncClient
from tests.api import test_cli
from tests.api.conftest import BASE_URL
from tests.api.people_fixtures import add_user
from tests.api.test_cli import Cli, one_line_error

cli = test_cli.cli  # the CLI-on-the-app fixture

VALUE = "sdk-s3cret-value"


async def test_the_sdk_puts_lists_and_deletes(app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    async with AsyncClient(http=api) as client:
        await client.secrets.put("DB_PASSWORD", VALUE)
        await client.secrets.put("DB_PASSWORD", VALUE + "2")
        listed = await client.secrets.list()
        assert [s.name for s in listed] == ["DB_PASSWORD"] and listed[0].updated_by == "admin"
        assert VALUE not in repr(listed)
        with pytest.raises(InvalidInput) as bad:
            await client.secrets.put("DB_PASSWORD", "nul\x00" + VALUE)  # refused before it is sent
        assert bad.value.field == "value" and VALUE not in str(bad.value)
        with pytest.raises(InvalidInput) as bad_name:
            await client.secrets.put("lower", VALUE)
        assert bad_name.value.field == "path.name"
        await client.secrets.delete("DB_PASSWORD")
        with pytest.raises(NotFound):
            await client.secrets.delete("DB_PASSWORD")
        assert await client.secrets.list() == []
    operator = await add_user(db, "olga", "default", "operator")
    headers = {"Authorization": f"Bearer {operator.token}"}
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers) as http,
        AsyncClient(http=http) as client,
    ):
        assert await client.secrets.list() == []
        with pytest.raises(Forbidden):
            await client.secrets.put("MINE", VALUE)


async def test_the_cli_sets_from_stdin_or_a_file_and_never_prints_a_value(
    cli: Cli, tmp_path: Path, app: FastAPI
) -> None:
    out = await cli("secrets", "set", "DB_PASSWORD", input=VALUE + "\n")
    assert out.code == 0 and out.stdout.strip() == "secret DB_PASSWORD set", out
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN KEY-----\nabc\n-----END KEY-----\n")
    out = await cli("secrets", "set", "KEY_FILE", "--file", str(key))
    assert out.code == 0, out
    listed = await cli("secrets", "--json")
    assert [s["name"] for s in listed.json()] == ["DB_PASSWORD", "KEY_FILE"]
    table = await cli("secrets", "ls")
    assert "DB_PASSWORD" in table.stdout and "KEY_FILE" in table.stdout
    for printed in (listed.stdout, table.stdout):
        assert VALUE not in printed and "BEGIN KEY" not in printed
    # what the job's box would get: stdin's trailing newline dropped, a file's text as it is
    sealed = {r["name"]: r["sealed"] for r in await app.state.pool.fetch("SELECT name, sealed FROM secrets")}
    box = app.state.settings.secret_box()
    assert box.open(sealed["DB_PASSWORD"]) == VALUE
    assert box.open(sealed["KEY_FILE"]) == key.read_text()

    one_line_error(await cli("secrets", "set", "lower", input="x"), "path.name")
    one_line_error(await cli("secrets", "set", "EMPTY", input=""), "the value is empty")
    one_line_error(await cli("secrets", "set", "NOFILE", "--file", str(tmp_path / "none")), "cannot read")
    out = await cli("secrets", "rm", "DB_PASSWORD")
    assert out.code == 0 and out.stdout.strip() == "secret DB_PASSWORD deleted"
    one_line_error(await cli("secrets", "rm", "DB_PASSWORD"), "secret DB_PASSWORD not found")
    assert json.loads((await cli("secrets", "--json")).stdout)[0]["name"] == "KEY_FILE"
