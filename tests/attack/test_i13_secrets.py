"""Attacks on org secrets (issue 13): a value must appear in no API answer, database row other than
its sealed one, Temporal payload or log line; a box sees only its own job's values; and the box's
masking must hold against the ways a value reaches the transcript in another shape (surrounding
spaces dropped by a shell, JSON escaping in the `output` stream, a multi-line value of short
lines) and against output made to make masking slow (docs/secrets.md). Each test fails when its
defence is missing."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun.agent.lines import LineFramer
from boxrun.agent.logpump import LogPump
from boxrun.agent.mask import Masker
from boxrun.services.secrets import Resolved
from tests.api.helpers import Box, assert_error
from tests.api.people_fixtures import add_org, add_user
from tests.api.test_agent import session
from tests.api.test_secrets import client as _client
from tests.api.test_secrets import control_worker, ended, history_bytes, offered, put  # noqa: F401 (control_worker)
from tests.unit.test_secret_masking import Sink

VALUE = "Zq7-lab-b3nch-pa55w0rd"


def masked(values: list[str], text: str) -> str:
    return Masker(values).mask(text.encode()).decode()


# ---------------------------------------------------------------- masking on the box


def test_surrounding_spaces_of_a_value_do_not_shield_it() -> None:
    """A value pasted with a trailing space: `echo $PW` prints it without, and so does any
    program that strips its input."""
    assert masked(["hunter22 "], "pw=hunter22\n") == "pw=***\n"
    assert masked(["\thunter22"], "[hunter22]\n") == "[***]\n"


@pytest.mark.parametrize("value", ['pa"ss', "back\\slash", "pässwörd", "tab\there", "ctl\x01x", 'ünï"\\'])
def test_a_value_emitted_as_json_on_the_output_stream_is_masked(value: str) -> None:
    """boxrun_job.emit sends anything but a str as JSON (ASCII, escaped): a value with a quote, a
    backslash, a control or non-ASCII character is written differently from what the job holds."""
    sent = json.dumps({"password": value}, separators=(",", ":"), default=str)  # as bootstrap._emit does
    assert value not in sent or value.isascii()  # (the shape really differs for most)
    out = masked([value], sent + "\n")
    assert out == '{"password":"***"}\n'
    assert masked([value], json.dumps([value], ensure_ascii=False) + "\n") == '["***"]\n'
    assert masked([value], repr(value) + "\n") in ("'***'\n", '"***"\n')


async def test_the_output_stream_is_masked_by_the_pump() -> None:
    sink = Sink()
    pump = LogPump(sink, "job", mask=Masker(['s3"cr\\3t']))
    framer = LineFramer(lambda block, n: pump.add_block("output", block, n))
    framer.feed(json.dumps({"token": 's3"cr\\3t'}).encode() + b"\n")
    pump.start()
    await pump.close()
    assert sink.data == b'{"token": "***"}\n'


def test_a_multi_line_value_of_short_lines_is_still_masked() -> None:
    """Lines of a multi-line value shorter than MIN_LINE are left alone as structure (`{`, `}`);
    but a value made only of short lines would then be masked nowhere."""
    assert masked(["ab1\ncd2"], "ab1\ncd2\n") == "***\n***\n"
    assert masked(["x\ny\n"], "x\ny\n") == "***\n***\n"


def test_regex_metacharacters_are_literal() -> None:
    value = r".*[a-z]+(?:x)|\d$^"
    assert masked([value], f"a {value} b\nabc 123\n") == "a *** b\nabc 123\n"


def test_a_value_inside_another_and_overlapping_both_ends() -> None:
    assert masked(["bcd", "abcde"], "xabcdey bcd\n") == "x***y ***\n"
    assert masked(["abc", "cde"], "abcde abc cde abcabc\n") == "*** *** *** ***\n"
    assert masked(["abab"], "abababa\n") == "***a\n"  # occurrences at 0 and 2 cover 0..6


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a" * 4000, b"a" * (1 << 20)),  # a value repeating itself, printed as one long line
        ("ab" * 2000, b"ab" * (1 << 19)),
        ("aab" * 1000 + "a", b"aab" * 350_000),
        ("a" * 3999 + "b", b"a" * (1 << 20)),
    ],
)
def test_masking_stays_linear_on_hostile_output(value: str, text: bytes) -> None:
    """Masking runs on the agent's event loop: quadratic work there (every byte re-matched against
    a long periodic value) stalls the logs and heartbeats of every job of the box."""
    masker = Masker([value, value[:-1]])
    began = time.monotonic()
    out = masker.mask(text + b"\n")
    took = time.monotonic() - began
    assert took < 1.0, f"masking 1 MiB took {took:.1f} s"
    if text.startswith(value[:-1].encode()):
        assert value[:-1].encode() not in out


def test_masking_a_long_value_against_the_obvious_reference() -> None:
    """The fast path gives the same answer as the plain definition (every occurrence, spans merged)."""
    import random

    rng = random.Random(13)
    for _ in range(300):
        alphabet = rng.choice(["ab", "abc", "a"])
        values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice(alphabet + " ") for _ in range(rng.randint(0, 40)))
        covered = [False] * len(text)
        for v in values:
            for i in range(len(text) - len(v) + 1):
                if text.startswith(v, i):
                    covered[i : i + len(v)] = [True] * len(v)
        expect, i = "", 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                expect += "***"
            else:
                expect += text[i]
                i += 1
        assert masked(values, text + "\n") == expect + "\n", (values, text)


# ---------------------------------------------------------------- the API never gives a value back


async def test_a_refused_put_never_echoes_the_value(api: httpx.AsyncClient) -> None:
    json_bodies: list[Any] = [
        {"value": [VALUE]},
        {"value": {"v": VALUE}},
        {"value": VALUE, "value2": VALUE},
        {"value": VALUE, "extra": {"nested": VALUE}},
        {"value": None, "hint": VALUE},
        [VALUE],
        VALUE,
    ]
    for body in json_bodies:
        resp = await api.put("/api/secrets/OK_NAME", json=body)
        assert resp.status_code == 422, resp.text
        assert VALUE not in resp.text
    raw_bodies = [
        b'{"value": "' + VALUE.encode() + b"\xff\xfe" + b'"}',  # not UTF-8
        b'{"value": "' + VALUE.encode() + b'"',  # cut short
        b'{"value": "' + VALUE.encode() + b'\\ud83d"}',  # a lone high surrogate at the end
        b'{"value": "' + VALUE.encode() + b'\\x"}',  # a bad escape
        b'{"value": "' + VALUE.encode() + b'", "value": 1}',  # a duplicate key
    ]
    for raw in raw_bodies:
        resp = await api.put("/api/secrets/OK_NAME", content=raw, headers={"Content-Type": "application/json"})
        assert resp.status_code in (400, 422), resp.text  # (a body that is no UTF-8 is not even parsed: 400)
        assert VALUE not in resp.text
    resp = await api.put("/api/secrets/OK_NAME", content=VALUE.encode(), headers={"Content-Type": "text/plain"})
    assert 400 <= resp.status_code < 500 and VALUE not in resp.text
    assert (await api.get("/api/secrets")).json() == {"data": []}


async def test_a_resolved_value_appears_nowhere_but_the_claiming_boxs_bundle(
    app: FastAPI,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    make_box: Callable[..., Awaitable[Box]],
    control_worker: None,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the claim resolved it: no user-facing view (job, spec, events, list, rerun, audit,
    errors), no database row outside `secrets` (its sealed bytes), no Temporal payload, no log
    line; another box's token cannot claim or fetch the bundle; and a box of another org neither."""
    caplog.set_level(logging.DEBUG)
    box = await make_box("sbox")
    other = await make_box("other-box")
    await put(api, "DB_PASSWORD", VALUE)
    env = {"PW": "${{ secrets.DB_PASSWORD }}", "DSN": "pg://u:${{secrets.DB_PASSWORD}}@h/db"}
    job_id, headers = await offered(api, box, env)
    other_headers = await session(other)
    for resp in (
        await other.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=other_headers),
        await other.agent.get(f"/api/agent/jobs/{job_id}/bundle"),
    ):
        assert_error(resp, 404, "not_found")
    claimed = await box.agent.post(f"/api/agent/jobs/{job_id}/claim", headers=headers)
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["bundle"]["env"]["PW"] == VALUE  # (it was resolved, for this box)
    for resp in (
        await other.agent.get(f"/api/agent/jobs/{job_id}/bundle"),
        await other.agent.post(f"/api/agent/jobs/{job_id}/result", json={"exit_code": 0}),
    ):
        assert resp.status_code == 404 and VALUE not in resp.text
    done = await box.agent.post(f"/api/agent/jobs/{job_id}/result", json={"exit_code": 0})
    assert done.status_code == 204, done.text
    await ended(api, job_id)
    # the job is over: its own box cannot fetch the values again either (a token stolen later)
    late = await box.agent.get(f"/api/agent/jobs/{job_id}/bundle")
    assert late.status_code in (404, 409) and VALUE not in late.text

    seen = []
    for path in (
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/spec",
        f"/api/jobs/{job_id}/events",
        f"/api/jobs/{job_id}/logs",
        "/api/jobs",
        "/api/audit",
        "/api/secrets",
    ):
        resp = await api.get(path)
        seen.append(resp.text)
        assert VALUE not in resp.text, path
    rerun = await api.post(f"/api/jobs/{job_id}/rerun")
    assert rerun.status_code == 201 and VALUE not in rerun.text
    bad = await api.post(
        "/api/jobs", json={"box": "sbox", "script": "x", "env": {"PW": env["PW"], "N": "${{ secrets.NOPE }}"}}
    )
    assert bad.status_code == 422 and VALUE not in bad.text
    # every row of every table, as text: only the sealed bytes of `secrets` hold it (and not readably)
    tables = [r["tablename"] for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert "jobs" in tables and "secrets" in tables
    for table in tables:
        rows = await db.fetch(f'SELECT t::text AS row FROM "{table}" t')  # (names from pg_tables)
        assert not any(VALUE in r["row"] for r in rows), f"the value in a row of {table}"
    history = await history_bytes(app, job_id)
    assert job_id.encode() in history and VALUE.encode() not in history
    for record in caplog.records:
        assert VALUE not in record.getMessage(), record.name


async def test_a_matrix_value_cannot_smuggle_a_reference(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """`${{ matrix.v }}` is substituted once: a matrix value may not carry `${{ secrets.X }}` text
    (the matrix value pattern refuses `$`, braces and spaces), so a reference in a step's env is
    always one its author wrote in the env itself; nothing is written on the refusal."""
    await make_box("sbox")
    await put(api, "DB_PASSWORD", VALUE)
    for smuggled in ("${{ secrets.DB_PASSWORD }}", "${{secrets.DB_PASSWORD}}", "$", "{{"):
        resp = await api.post(
            "/api/pipelines",
            json={
                "steps": {
                    "s": {"box": "sbox", "script": "true", "matrix": {"v": [smuggled]}, "env": {"P": "${{ matrix.v }}"}}
                }
            },
        )
        assert_error(resp, 422, "invalid_input")
        assert VALUE not in resp.text
    assert (await api.get("/api/jobs")).json()["count"] == 0


async def test_a_reference_whose_name_comes_from_the_matrix_is_checked_after_expansion(
    api: httpx.AsyncClient, make_box: Callable[..., Awaitable[Box]]
) -> None:
    """Decided: `${{ secrets.${{ matrix.n }} }}` is allowed. The name is composed of the pipeline's
    own text (its env and its matrix, both written by the submitter), so it names nothing the
    submitter could not have written out; after expansion each step's reference is checked against
    the org like any other (422 naming the step, nothing written) and frozen as reference text."""
    await make_box("sbox")
    await put(api, "DB_PASSWORD", VALUE)
    await put(api, "API_TOKEN", "t0ken-" + VALUE)
    step = {"box": "sbox", "script": "true", "env": {"P": "${{ secrets.${{ matrix.n }} }}"}}
    resp = await api.post("/api/pipelines", json={"steps": {"s": {**step, "matrix": {"n": ["DB_PASSWORD", "NOPE"]}}}})
    assert_error(resp, 422, "invalid_input", detail="refers to secret NOPE", field="body.steps.s[n=NOPE].env.P")
    assert (await api.get("/api/jobs")).json()["count"] == 0
    resp = await api.post(
        "/api/pipelines", json={"steps": {"s": {**step, "matrix": {"n": ["DB_PASSWORD", "API_TOKEN"]}}}}
    )
    assert resp.status_code == 201, resp.text
    assert VALUE not in resp.text
    pipeline = await api.get(f"/api/pipelines/{resp.json()['id']}")
    assert pipeline.status_code == 200 and VALUE not in pipeline.text


async def test_a_value_of_only_whitespace_is_refused(api: httpx.AsyncClient) -> None:
    """The box could mask it only by blanking every space of the transcript (and so masks it
    nowhere): such a value is refused at the PUT, without repeating it."""
    for value in (" ", "   ", "\t", "\n", " \r\n \t", "\u00a0\u2003"):
        resp = await api.put("/api/secrets/BLANK", json={"value": value})
        assert_error(resp, 422, "invalid_input", detail="not only spaces", field="body.value")
    assert (await api.get("/api/secrets")).json() == {"data": []}
    await put(api, "PADDED", " x ")  # spaces around something are fine


def test_resolved_values_do_not_show_in_a_repr() -> None:
    """What resolution returns holds the values: an f-string, a log line or a traceback's locals
    printing it must not print them."""
    resolved = Resolved(env={"PW": VALUE}, mask=[VALUE])
    for shown in (repr(resolved), str(resolved), f"{resolved}", repr([resolved])):
        assert VALUE not in shown


async def test_a_revoked_admin_token_reaches_no_secret_route(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_org(db, "acme")
    admin = await add_user(db, "acme-admin", "acme", "admin")
    async with _client(app, admin.token) as acme:
        await put(acme, "KEEP", VALUE)
        await db.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", admin.token_id)
        for method, path, body in (
            ("GET", "/api/secrets", None),
            ("PUT", "/api/secrets/KEEP", {"value": "overwritten"}),
            ("PUT", "/api/secrets/NEW_ONE", {"value": "x"}),
            ("DELETE", "/api/secrets/KEEP", None),
        ):
            resp = await acme.request(method, path, json=body)
            assert resp.status_code == 401, (method, path, resp.text)
    rows = await db.fetch("SELECT name, updated_by FROM secrets WHERE org_id = 'acme'")
    assert [(r["name"], r["updated_by"]) for r in rows] == [("KEEP", "acme-admin")]
