"""Secrets on a whole stack (FaultStack in-process, real agents): a script that prints its
secrets shows `***` in the replay, the SSE stream, logs.txt and the S3 archive; the values are in
no Temporal history; a secret deleted before the job is claimed fails it with the reason."""

from __future__ import annotations

import gzip
import json
import uuid

import httpx
import pytest

from boxrun.temporal import connect
from tests.conftest import wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import archive, replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
TOKEN_A = "abcdef-" + uuid.uuid4().hex[:8]  # overlaps TOKEN_B in the text the script prints
TOKEN_B = TOKEN_A[3:] + "-tail"
KEY = f"-----BEGIN TEST KEY-----\n{uuid.uuid4().hex}\n{uuid.uuid4().hex}\n-----END TEST KEY-----"
SCRIPT = """
import os, sys, boxrun_job
pw = os.environ["DB_PASSWORD"]
print("password:", pw)
print("in a dsn:", os.environ["DSN"])
print("stderr", pw, file=sys.stderr, flush=True)
sys.stdout.write("a value cut across writes: " + pw[:3])
sys.stdout.flush()
sys.stdout.write(pw[3:] + " end\\n")
print("overlap:", os.environ["TOKEN_A"][:3] + os.environ["TOKEN_B"])
print(os.environ["KEY"])
boxrun_job.emit({"pw": pw})
print("done")
"""
EXPECTED = [
    ("stdout", "password: ***"),
    ("stdout", "in a dsn: postgres://app:***@db/app"),
    ("stderr", "stderr ***"),
    ("stdout", "a value cut across writes: *** end"),
    ("stdout", "overlap: ***"),
    ("stdout", "***"),
    ("stdout", "***"),
    ("stdout", "***"),
    ("stdout", "***"),
    ("output", '{"pw":"***"}'),
    ("stdout", "done"),
]
VALUES = [PASSWORD, TOKEN_A, TOKEN_B, *KEY.splitlines()]


@pytest.fixture(scope="module")
async def fs(tmp_path_factory):
    async with fault_stack(tmp_path_factory.mktemp("secrets") / "dev", boxes=1) as stack:
        yield stack


@pytest.fixture
async def api(fs):
    async with fs.api() as client:
        yield client


async def put(api: httpx.AsyncClient, name: str, value: str) -> None:
    resp = await api.put(f"/api/secrets/{name}", json={"value": value})
    assert resp.status_code == 204, resp.text


def no_value(text: str, where: str) -> None:
    leaked = [v for v in VALUES if v in text]
    assert not leaked, f"a secret value in {where}"


async def test_a_script_printing_its_secrets_shows_stars_everywhere(api, fs):
    for name, value in (("DB_PASSWORD", PASSWORD), ("TOKEN_A", TOKEN_A), ("TOKEN_B", TOKEN_B), ("KEY_FILE", KEY)):
        await put(api, name, value)
    env = {
        "DB_PASSWORD": "${{ secrets.DB_PASSWORD }}",
        "DSN": "postgres://app:${{secrets.DB_PASSWORD}}@db/app",
        "TOKEN_A": "${{ secrets.TOKEN_A }}",
        "TOKEN_B": "${{ secrets.TOKEN_B }}",
        "KEY": "${{ secrets.KEY_FILE }}",
    }
    job = await submit(api, SCRIPT, env=env)
    done = await wait_terminal(api, job["id"], timeout=120)
    assert done["state"] == "completed", done
    # the replay (GET .../logs)
    lines = await replay(api, job["id"])
    assert [(line["stream"], line["text"]) for line in lines] == EXPECTED
    # the SSE stream (replayed from the stored lines, the job having ended)
    async with api.stream("GET", f"/api/jobs/{job['id']}/logs/stream") as resp:
        sse = (await resp.aread()).decode()
    assert sse.count("***") >= len([e for e in EXPECTED if "***" in e[1]])
    no_value(sse, "the SSE stream")
    # logs.txt
    text = await api.get(f"/api/jobs/{job['id']}/logs.txt", follow_redirects=True)
    assert text.status_code == 200, text.text
    if text.headers.get("content-type", "").startswith("text/"):
        assert "password: ***" in text.text
    no_value(text.text, "logs.txt")
    # the archive in S3
    archived = await wait_for(lambda: archive(api, job["id"]), timeout=30, what="transcript archive")
    rows = [json.loads(r) for r in gzip.decompress(archived).decode().splitlines()]
    assert [(r["stream"], r["text"]) for r in rows] == EXPECTED
    no_value(gzip.decompress(archived).decode(), "the archive")
    # the spec shows the references; the API shows no value anywhere
    assert (await api.get(f"/api/jobs/{job['id']}/spec")).json()["env"] == env
    for path in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/events", "/api/secrets", "/api/audit"):
        no_value((await api.get(path)).text, path)
    # no value in the Temporal history (raw event bytes: payloads are their JSON there)
    client = await connect(fs.endpoints["temporal_address"])
    history = await client.get_workflow_handle(job["id"]).fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert job["id"].encode() in raw
    leaked = [v for v in VALUES if v.encode() in raw]
    assert not leaked, "a secret value reached a Temporal payload"


async def test_a_secret_deleted_before_the_claim_fails_the_job_with_the_reason(api):
    """The box is kept busy so the job waits; the secret goes meanwhile; at its claim the job
    fails "secret NAME no longer exists" and never runs."""
    await put(api, "GOES_AWAY", "soon-gone-" + uuid.uuid4().hex)
    blocker = await submit(api, "import time\ntime.sleep(4)\n")
    job = await submit(api, "print('ran')\n", env={"X": "${{ secrets.GOES_AWAY }}"})
    resp = await api.delete("/api/secrets/GOES_AWAY")
    assert resp.status_code == 204, resp.text
    done = await wait_terminal(api, job["id"], timeout=120)
    assert (done["state"], done["error"], done["started_at"]) == (
        "failed",
        "secret GOES_AWAY no longer exists",
        None,
    ), done
    assert await replay(api, job["id"]) == []
    assert (await wait_terminal(api, blocker["id"], timeout=60))["state"] == "completed"
