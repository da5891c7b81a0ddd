"""Attack probes against issue 12's job list filters and job labels (in-process, real parts).

Each test sends what a careless or hostile client could: NUL bytes, lone surrogates, huge values,
forged cursors, another org's cursor, cursor with offset. The promise checked: a clear 4xx naming
the field, never a 500, and nothing of another org's."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun.services.jobs import encode_cursor
from tests.api.conftest import _client
from tests.api.people_fixtures import add_org, add_user


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _assert_422(resp: httpx.Response, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == 422, (resp.status_code, resp.text)
    body: dict[str, Any] = resp.json()
    assert body["detail"] and "Traceback" not in resp.text
    if field is not None:
        assert field in resp.text, body
    return body


# ---------------------------------------------------------------- label filters


@pytest.mark.parametrize(
    "label",
    [
        "team:\x00",  # NUL in the value: no jsonb can hold it
        "team:a\x00b",
        "te\x00am:x",  # NUL in the key
        "Team:x",  # upper-case key
        "team",  # no colon
        ":x",  # empty key
        "team:" + "v" * 201,  # value over 200
        "k" * 64 + ":x",  # key over 63
    ],
)
async def test_a_bad_label_filter_is_a_422_not_a_500(api: httpx.AsyncClient, label: str) -> None:
    resp = await api.get("/api/jobs", params={"label": label})
    _assert_422(resp, "label")


async def test_a_nul_label_filter_given_raw_in_the_url_is_a_422(api: httpx.AsyncClient) -> None:
    for raw in ("label=team:%00", "label=team:%C0%80", "label=team:%ED%A0%80", "label=team%00:x"):
        resp = await api.get(f"/api/jobs?{raw}")
        assert resp.status_code in (200, 422), (raw, resp.status_code, resp.text)
        if resp.status_code == 200:  # an undecodable byte became U+FFFD: a harmless value matching nothing
            assert resp.json()["data"] == [], raw


async def test_33_label_filters_are_refused(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/jobs", params=[("label", f"k{i}:v") for i in range(33)])
    _assert_422(resp, "label")
    ok = await api.get("/api/jobs", params=[("label", f"k{i}:v") for i in range(32)])
    assert ok.status_code == 200, ok.text


async def test_a_huge_label_filter_is_refused_cleanly(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/jobs", params={"label": "team:" + "v" * 60_000})
    assert resp.status_code in (413, 414, 422, 431), resp.status_code
    assert len(resp.text) < 4_000  # the answer does not echo the value back whole


# ---------------------------------------------------------------- since / until


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-23:59",
        "8999-12-31T23:59:59-23:59",
        "1970-01-01T00:00:00+23:59",
        "2026-11-22T10:00:00",  # no timezone
        "2026-11-22",  # a date only
        "2026-02-30T10:00:00Z",  # no such day
        "2026-11-22T10:00:00 00:00",  # '+' that became a space in a URL
        "1e308",
        "\x00",
        "x" * 5000,
    ],
)
async def test_since_and_until_out_of_range_or_malformed(api: httpx.AsyncClient, value: str) -> None:
    for name in ("since", "until"):
        resp = await api.get("/api/jobs", params={name: value})
        assert resp.status_code in (200, 422), (name, value, resp.status_code, resp.text[:300])
        if resp.status_code == 422:
            _assert_422(resp, name)


async def test_since_after_until_is_a_422(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/jobs", params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"})
    _assert_422(resp, "since")
    # the same instant in two timezones is not "after"
    same = await api.get("/api/jobs", params={"since": "2026-01-01T01:00:00+01:00", "until": "2026-01-01T00:00:00Z"})
    assert same.status_code == 200, same.text


# ---------------------------------------------------------------- cursor


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        "",
        "=",
        _cursor("2026-01-01T00:00:00+00:00"),  # no id
        _cursor("2026-01-01T00:00:00|" + str(uuid.uuid4())),  # naive time
        _cursor("not a time|" + str(uuid.uuid4())),
        _cursor("2026-01-01T00:00:00+00:00|not-a-uuid"),
        _cursor("2026-01-01T00:00:00+00:00|\x00"),
        base64.urlsafe_b64encode(b"\xff\xfe\x00|\x80").decode(),  # not UTF-8
        # times that exist in Python but not in UTC (or not in Postgres)
        _cursor("0001-01-01T00:00:00+14:00|" + str(uuid.uuid4())),
        _cursor("0001-01-01T00:00:00+00:00|" + str(uuid.uuid4())),
        _cursor("9999-12-31T23:59:59-23:59|" + str(uuid.uuid4())),
        _cursor("9999-12-31T23:59:59.999999+00:00|" + str(uuid.uuid4())),
        "A" * 201,  # over the length limit
    ],
)
async def test_a_forged_or_garbage_cursor_is_a_422(api: httpx.AsyncClient, cursor: str) -> None:
    resp = await api.get("/api/jobs", params={"cursor": cursor})
    assert resp.status_code in (200, 422), (cursor, resp.status_code, resp.text[:300])
    if resp.status_code == 422:
        _assert_422(resp, "cursor")


async def test_cursor_with_offset_is_a_422(api: httpx.AsyncClient) -> None:
    cursor = encode_cursor(datetime.now(UTC), uuid.uuid4())
    _assert_422(await api.get("/api/jobs", params={"cursor": cursor, "offset": 1}), "offset")
    assert (await api.get("/api/jobs", params={"cursor": cursor, "offset": 0})).status_code == 200


async def test_another_orgs_cursor_shows_only_the_callers_jobs(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    """A cursor is (time, id) only: carried to another org, it positions that org's list and shows
    nothing of the org that made it."""
    await make_box("b1")
    mine = [(await api.post("/api/jobs", json={"box": "b1", "script": f"echo {i}"})).json()["id"] for i in range(3)]
    page = (await api.get("/api/jobs", params={"limit": 1})).json()
    assert page["next_cursor"]
    await add_org(db, "other")
    stranger = await add_user(db, "mallory", "other", "admin")
    async with _client(app, stranger.token) as other:
        resp = await other.get("/api/jobs", params={"cursor": page["next_cursor"]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["data"] == [] and resp.json()["count"] == 0
        assert not set(mine) & {j["id"] for j in resp.json()["data"]}


async def test_unknown_and_repeated_list_parameters(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/jobs", params={"ownr": "me"})
    _assert_422(resp, "ownr")
    resp = await api.get("/api/jobs", params={"\x00": "1"})
    assert resp.status_code == 422, resp.text
    resp = await api.get("/api/jobs", params=[("limit", "1"), ("limit", "999999")])
    assert resp.status_code in (200, 422), resp.text
    resp = await api.get("/api/jobs", params={"owner": "\x00"})
    _assert_422(resp, "owner")
    resp = await api.get("/api/jobs", params={"pipeline_id": "../../etc"})
    _assert_422(resp, "pipeline_id")


# ---------------------------------------------------------------- labels at submission


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ({"team": "a\x00b"}, "NUL in a value"),
        ({"te\x00am": "x"}, "NUL in a key"),
        ({"team": "\ud800"}, "lone surrogate in a value"),
        ({"\udfff": "x"}, "lone surrogate in a key"),
        ({"team": "v" * 201}, "value over 200"),
        ({"Team": "x"}, "upper-case key"),
        ({"": "x"}, "empty key"),
        ({"1team": "x"}, "key starting with a digit"),
        ({"k" * 64: "x"}, "key over 63"),
        ({f"k{i}": "v" for i in range(33)}, "33 labels"),
        ({"team": 5}, "a number"),
        ({"team": None}, "null"),
        ({"team": ["a"]}, "a list"),
        (["team:x"], "a list of strings"),
    ],
)
async def test_bad_labels_at_submission_are_a_422_and_write_nothing(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any], labels: Any, why: str
) -> None:
    await make_box("b1")
    body = json.dumps({"box": "b1", "script": "true", "labels": labels}, ensure_ascii=True)
    resp = await api.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, (why, resp.status_code, resp.text[:300])
    assert "labels" in resp.text, why
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0, why


async def test_32_labels_of_200_characters_are_taken_whole(
    api: httpx.AsyncClient, make_box: Callable[..., Any]
) -> None:
    await make_box("b1")
    labels = {f"k{i}": "v" * 200 for i in range(32)}
    resp = await api.post("/api/jobs", json={"box": "b1", "script": "true", "labels": labels})
    assert resp.status_code == 201, resp.text
    assert resp.json()["labels"] == labels
    found = await api.get("/api/jobs", params={"label": f"k31:{'v' * 200}"})
    assert [j["id"] for j in found.json()["data"]] == [resp.json()["id"]]


async def test_label_values_are_data_not_markup_or_sql(api: httpx.AsyncClient, make_box: Callable[..., Any]) -> None:
    await make_box("b1")
    evil = {"x": "<img src=x onerror=alert(1)>", "y": "'); DROP TABLE jobs; --", "z": '{"a":1}'}
    job = (await api.post("/api/jobs", json={"box": "b1", "script": "true", "labels": evil})).json()
    assert job["labels"] == evil
    for key, value in evil.items():
        found = await api.get("/api/jobs", params={"label": f"{key}:{value}"})
        assert [j["id"] for j in found.json()["data"]] == [job["id"]], key


# ---------------------------------------------------------------- pipeline labels


async def _pipeline(api: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await api.post(
        "/api/pipelines", content=json.dumps(body, ensure_ascii=True), headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ({"team": "a\x00b"}, "NUL"),
        ({"team": "\ud800"}, "lone surrogate"),
        ({"team": "v" * 201}, "value over 200"),
        ({"Bad Key": "x"}, "bad key"),
        ({f"k{i}": "v" for i in range(33)}, "33 labels"),
        ({"team": "${{ matrix.board }}"}, "a matrix expression at the top"),
        ("team=x", "a string"),
    ],
)
async def test_bad_pipeline_labels_are_a_422_and_write_nothing(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any], labels: Any, why: str
) -> None:
    await make_box("b1")
    resp = await _pipeline(api, {"labels": labels, "steps": {"a": {"box": "b1", "script": "true"}}})
    assert resp.status_code == 422, (why, resp.status_code, resp.text[:300])
    assert "labels" in resp.text, why
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0, why


async def test_merged_pipeline_and_step_labels_over_32_are_refused(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    await make_box("b1")
    top = {f"p{i}": "v" for i in range(20)}
    step = {f"s{i}": "v" for i in range(20)}
    resp = await _pipeline(api, {"labels": top, "steps": {"a": {"box": "b1", "script": "true", "labels": step}}})
    assert resp.status_code == 422, resp.text
    assert "labels" in resp.text
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0


async def test_a_matrix_value_substituted_into_a_label_is_checked(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    await make_box("b1")
    long = "v" * 150
    resp = await _pipeline(
        api,
        {
            "steps": {
                "a": {
                    "box": "b1",
                    "script": "true",
                    "matrix": {"board": [long]},
                    "labels": {"board": "${{ matrix.board }}${{ matrix.board }}"},  # 300 characters once substituted
                }
            }
        },
    )
    assert resp.status_code == 422, resp.text
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0


async def test_step_labels_that_are_not_a_mapping_under_pipeline_labels(
    api: httpx.AsyncClient, make_box: Callable[..., Any]
) -> None:
    await make_box("b1")
    for step_labels in (["x"], "x", 5, None):
        resp = await _pipeline(
            api, {"labels": {"team": "t"}, "steps": {"a": {"box": "b1", "script": "true", "labels": step_labels}}}
        )
        assert resp.status_code == 422, (step_labels, resp.status_code, resp.text[:300])


# ---------------------------------------------------------------- every query parameter of every GET route

NASTY = ["\x00", "a\x00b", "%00", "\x7f" * 3, "x" * 4000, "-1", "9" * 30, "2026-13-45T99:99:99Z", "../..", "'\";--"]


async def test_no_query_value_of_any_get_route_is_a_500(app: FastAPI, api: httpx.AsyncClient) -> None:
    """Every GET route's query parameters (the list filters the dashboard builds from the URL's
    search string among them) given NUL bytes, huge, negative or malformed values: 2xx or 4xx,
    never a 500."""
    job = "00000000-0000-0000-0000-000000000000"
    spec = app.openapi()
    failures = []
    for path, item in spec["paths"].items():
        op = item.get("get")
        if op is None or path.endswith("/stream") or path.endswith("/events") or "/agent/" in path:
            continue  # streams stay open; agent routes take node tokens
        url = re.sub(r"\{[^}]+\}", job, path)
        for param in op.get("parameters", []):
            if param["in"] != "query":
                continue
            for value in NASTY:
                resp = await api.get(url, params={param["name"]: value})
                if resp.status_code >= 500:
                    failures.append((path, param["name"], value[:20], resp.status_code))
    assert not failures, failures


@pytest.mark.parametrize(
    ("labels_yaml", "why"),
    [
        ("{on: true}", "a YAML boolean"),
        ("{n: 1.5}", "a YAML float"),
        ("{n: ~}", "a YAML null"),
        ("{b: !!binary AAAA}", "YAML bytes"),
        ("{x: !!python/object/apply:os.system [id]}", "a Python tag"),
        ("{x: &a [1, 2], y: *a}", "an alias to a list"),
        ('{x: "a\\0b"}', "a NUL escape"),
        ('{x: "\\uD800"}', "a lone surrogate escape"),
        ("[team, x]", "a sequence"),
    ],
)
async def test_yaml_pipeline_labels_of_the_wrong_kind_are_a_422(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any], labels_yaml: str, why: str
) -> None:
    await make_box("b1")
    for where in ("top", "step"):
        if where == "top":
            text = f"labels: {labels_yaml}\nsteps:\n  a: {{box: b1, script: 'true'}}\n"
        else:
            text = f"steps:\n  a:\n    box: b1\n    script: 'true'\n    labels: {labels_yaml}\n"
        resp = await api.post("/api/pipelines", content=text, headers={"Content-Type": "application/yaml"})
        assert resp.status_code in (400, 422), (why, where, resp.status_code, resp.text[:300])
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0, why


async def test_yaml_dates_and_yes_are_strings_in_labels(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    """The loader is YAML 1.2's core schema (boxrun/pipelines/yamlload.py): `2026-01-01` and `yes`
    stay the strings they look like, kept as written (no date or boolean sneaks into a label)."""
    await make_box("b1")
    text = "labels: {release: 2026-01-01, on: yes}\nsteps:\n  a: {box: b1, script: 'true'}\n"
    resp = await api.post("/api/pipelines", content=text, headers={"Content-Type": "application/yaml"})
    assert resp.status_code == 201, resp.text
    spec = await db.fetchval("SELECT spec::text FROM pipelines WHERE id = $1", uuid.UUID(resp.json()["id"]))
    assert '"release": "2026-01-01"' in spec and '"on": "yes"' in spec, spec


async def test_a_yaml_alias_bomb_in_labels_is_refused_quickly(
    api: httpx.AsyncClient, db: asyncpg.Connection, make_box: Callable[..., Any]
) -> None:
    await make_box("b1")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        bomb += f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    text = "labels:\n" + "".join("  " + line + "\n" for line in bomb.splitlines()) + "steps:\n  s: {box: b1}\n"
    resp = await asyncio.wait_for(
        api.post("/api/pipelines", content=text, headers={"Content-Type": "application/yaml"}), timeout=20
    )
    assert resp.status_code in (400, 413, 422), (resp.status_code, resp.text[:300])
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 0
