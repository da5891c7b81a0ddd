"""The transcript cap on a whole stack (FaultStack in-process, a real agent): the org's cap set to
64 KiB, a job prints ~1 MB to stdout then 50 lines to stderr and exits 0. It completes; its stored
transcript is its head, ONE notice and its tail with the 50 stderr lines, the same in the paged
replay, ?tail=, logs.txt, the SSE replay and the S3 archive."""

from __future__ import annotations

import gzip
import json

import asyncpg
import pytest

from boxrun.constants import DEFAULT_ORG
from tests.conftest import wait_for
from tests.integration.faultstack import fault_stack
from tests.integration.jobs import archive, replay, submit, wait_terminal

pytestmark = pytest.mark.e2e

CAP = 64 << 10
ERRORS = [f"err {i:02d}: the failure is at the end" for i in range(50)]
SCRIPT = """
import sys, time
for i in range(10_000):
    print(f"out {i:05d} " + "x" * 90)
sys.stdout.flush()
time.sleep(1)  # the agent has read every stdout line before the first stderr one
for i in range(50):
    print(f"err {i:02d}: the failure is at the end", file=sys.stderr)
"""


@pytest.fixture(scope="module")
async def fs(tmp_path_factory):
    async with fault_stack(tmp_path_factory.mktemp("cap") / "dev", boxes=1) as stack:
        yield stack


@pytest.fixture
async def api(fs):
    async with fs.api() as client:
        yield client


async def test_a_job_past_its_orgs_cap_keeps_head_notice_and_tail_and_completes(api, fs):
    db = await asyncpg.connect(fs.child("api").env["BOXRUN_DATABASE_URL"])
    try:
        await db.execute("UPDATE orgs SET transcript_cap_bytes = $2 WHERE id = $1", DEFAULT_ORG, CAP)
        job = await submit(api, SCRIPT)
        done = await wait_terminal(api, job["id"], timeout=180)
        assert (done["state"], done["exit_code"]) == ("completed", 0), done
        assert done["log_lines"] == 10_050
        row = await db.fetchrow(
            "SELECT log_seq, log_stored_bytes, log_head_seq, log_dropped_lines FROM jobs WHERE id = $1", job["id"]
        )
    finally:
        await db.execute("UPDATE orgs SET transcript_cap_bytes = NULL WHERE id = $1", DEFAULT_ORG)
        await db.close()
    assert row["log_seq"] == 10_050 and row["log_stored_bytes"] <= CAP

    lines = await replay(api, job["id"])
    got = [(x["seq"], x["stream"], x["text"]) for x in lines]
    notices = [x for x in got if x[1] == "system"]
    assert len(notices) == 1 and notices[0][2].startswith("[boxrun] "), notices
    at = got.index(notices[0])
    head, tail = got[:at], got[at + 1 :]
    assert head == [(i + 1, "stdout", f"out {i:05d} " + "x" * 90) for i in range(len(head))] and head
    assert notices[0][0] == len(head) + 1 == row["log_head_seq"] + 1
    dropped = tail[0][0] - 1 - len(head)
    assert dropped == row["log_dropped_lines"] and f"{dropped:,} lines (" in notices[0][2]
    assert "passed its cap of 64 KiB" in notices[0][2]
    assert [x[0] for x in tail] == list(range(tail[0][0], 10_051)), "the tail is contiguous to the end"
    assert [x[2] for x in tail[-50:]] == ERRORS and {x[1] for x in tail[-50:]} == {"stderr"}
    assert all(x[1] == "stdout" for x in tail[:-50])
    # small pages cross the gap
    assert [(x["seq"], x["text"]) for x in await replay(api, job["id"], page=7)] == [(x[0], x[2]) for x in got]
    # the last 50 lines of stderr, as users are told to read them
    resp = await api.get(f"/api/jobs/{job['id']}/logs", params={"tail": 50, "stream": "stderr"})
    assert [x["text"] for x in resp.json()["data"]] == ERRORS
    # logs.txt, the SSE replay and the archive agree with the replay
    text = await api.get(f"/api/jobs/{job['id']}/logs.txt")
    assert text.status_code == 200 and text.text == "".join(x[2] + "\n" for x in got)
    async with api.stream("GET", f"/api/jobs/{job['id']}/logs/stream") as resp:
        sse = (await resp.aread()).decode()
    assert [int(x[4:]) for x in sse.splitlines() if x.startswith("id: ")] == [x[0] for x in got]
    assert '"last_seq": 10050' in sse
    archived = await wait_for(lambda: archive(api, job["id"]), timeout=60, what="transcript archive")
    rows = [json.loads(r) for r in gzip.decompress(archived).decode().splitlines()]
    assert [(r["seq"], r["stream"], r["text"]) for r in rows] == got
