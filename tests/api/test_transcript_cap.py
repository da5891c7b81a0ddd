"""The per-job transcript cap (docs/retention.md, "Transcript cap") on the real Postgres and S3:
past its cap a job's stored transcript keeps its head and its tail with ONE `system` notice
between them, and every reader (pages, one stream, the tail, logs.txt, the archive, SSE/WebSocket
followers, resends) copes with the gap of seqs it leaves."""

from __future__ import annotations

import asyncio
import gzip
import json

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from boxrun import logstore
from boxrun.api.live import follower as follow_mod
from boxrun.api.live import job_tail as tail_mod
from boxrun.api.live.follower import Follower
from boxrun.constants import DEFAULT_ORG
from boxrun.logbatch import Batch
from boxrun.schemas import JobResultReport
from boxrun.services import dispatch
from boxrun.services.archive import write_archive
from tests.integration.helpers import add_job

CAP = 64 << 10
OUT_LINES = 10_000  # ~1 MB of stdout
PER_BATCH = 200
ERRORS = [f"error {i:02d}: the failure is at the end, as usual" for i in range(50)]

Row = tuple[int, str, str]  # seq, stream, text


def out_text(seq: int) -> str:
    return f"out {seq:06d} " + "x" * (seq % 97)


def batch(first: int, texts: list[str], stream: str = "stdout") -> Batch:
    return Batch(first, [(len(texts), stream, 1_800_000_000.0 + first)], "".join(t + "\n" for t in texts).encode())


async def stored(db: asyncpg.Connection, job_id: str) -> list[Row]:
    return [(x.seq, x.stream, x.text) for x in [line async for line in logstore.read_all(db, job_id)]]


async def job_row(db: asyncpg.Connection, job_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT log_seq, log_bytes, log_stored_bytes, log_head_seq, log_dropped_lines, log_dropped_bytes,"
        " (SELECT COALESCE(sum(bytes), 0) FROM log_chunks WHERE job_id = jobs.id) AS chunk_bytes,"
        " (SELECT count(*) FROM log_chunks WHERE job_id = jobs.id) AS chunks"
        " FROM jobs WHERE id = $1",
        job_id,
    )
    assert row is not None
    return row


async def check(db: asyncpg.Connection, job_id: str, sent: list[Row], cap: int = CAP) -> list[Row]:
    """What is stored is the head of what was sent, one notice with the right counts, and the tail
    of what was sent (contiguous up to the last line); the jobs row agrees. Returns it."""
    got = await stored(db, job_id)
    row = await job_row(db, job_id)
    notices = [x for x in got if x[1] == "system" and x[2].startswith("[boxrun]")]
    assert len(notices) == 1, notices
    notice = notices[0]
    h = notice[0] - 1
    at = got.index(notice)
    assert got[:at] == sent[:h], "the head is the first lines, whole"
    tail = got[at + 1 :]
    t = tail[0][0]
    assert tail == sent[t - 1 :], "the tail is the last lines, contiguous to the end"
    dropped = sent[h : t - 1]
    dropped_bytes = sum(len(x[2].encode()) + 1 for x in dropped)
    assert notice[2] == logstore.notice(len(dropped), dropped_bytes, cap)
    assert f"{len(dropped):,} lines ({logstore.size_text(dropped_bytes)}) dropped here" in notice[2]
    held = sum(len(x[2].encode()) + 1 for x in got)
    assert (row["log_head_seq"], row["log_dropped_lines"], row["log_dropped_bytes"]) == (h, len(dropped), dropped_bytes)
    assert row["log_stored_bytes"] == row["chunk_bytes"] == held <= cap
    assert row["log_seq"] == sent[-1][0] and row["log_bytes"] == sum(len(x[2].encode()) + 1 for x in sent)
    head_bytes = sum(len(x[2].encode()) + 1 for x in got[:at])
    assert cap // 2 - logstore.chunk_bytes(cap) < head_bytes <= cap // 2, "the head is about half the cap"
    assert held - head_bytes > cap // 2 - 2 * logstore.chunk_bytes(cap), "and the tail the rest"
    return got


async def capped_job(db: asyncpg.Connection, *, cap: int | None = CAP) -> tuple[str, list[Row]]:
    """A job that printed ~1 MB to stdout then 50 lines to stderr, stored under `cap`."""
    job_id = await add_job(db, group="g")
    sent: list[Row] = []
    kw = {} if cap is None else {"cap_bytes": cap}
    for first in range(1, OUT_LINES + 1, PER_BATCH):
        texts = [out_text(s) for s in range(first, first + PER_BATCH)]
        assert await logstore.append(db, job_id, batch(first, texts), **kw) == first + PER_BATCH - 1
        sent += [(first + i, "stdout", t) for i, t in enumerate(texts)]
    first = len(sent) + 1
    await logstore.append(db, job_id, batch(first, ERRORS, "stderr"), **kw)
    sent += [(first + i, "stderr", t) for i, t in enumerate(ERRORS)]
    return job_id, sent


async def test_past_its_cap_a_transcript_keeps_head_one_notice_and_tail(db: asyncpg.Connection) -> None:
    job_id = await add_job(db, group="g")
    sent: list[Row] = []
    for first in range(1, OUT_LINES + 1, PER_BATCH):
        texts = [out_text(s) for s in range(first, first + PER_BATCH)]
        await logstore.append(db, job_id, batch(first, texts), cap_bytes=CAP)
        sent += [(first + i, "stdout", t) for i, t in enumerate(texts)]
        if len(sent) * 80 > 2 * CAP and first % (10 * PER_BATCH) == 1:
            await check(db, job_id, sent)  # the invariants hold after every trim, not only at the end
    first = len(sent) + 1
    await logstore.append(db, job_id, batch(first, ERRORS, "stderr"), cap_bytes=CAP)
    sent += [(first + i, "stderr", t) for i, t in enumerate(ERRORS)]
    got = await check(db, job_id, sent)
    assert got[-50:] == sent[-50:] and [x[2] for x in got[-50:]] == ERRORS
    # the notice is the only system line; a reader of one stream or of the end sees the right lines
    assert [(x.seq, x.text) for x in await logstore.read_stream(db, job_id, "system", 0, 100)] == [
        (x[0], x[2]) for x in got if x[1] == "system"
    ]
    assert [x.text for x in await logstore.tail(db, job_id, 50, "stderr")] == ERRORS
    assert [(x.seq, x.stream, x.text) for x in await logstore.tail(db, job_id, 75)] == got[-75:]
    text = b"".join([piece async for piece in logstore.transcript(db, job_id)])
    assert text == "".join(x[2] + "\n" for x in got).encode()
    stdout = b"".join([piece async for piece in logstore.transcript(db, job_id, "stdout")])
    assert stdout == "".join(x[2] + "\n" for x in got if x[1] == "stdout").encode()


async def test_pages_cross_the_gap_whatever_their_size(db: asyncpg.Connection) -> None:
    """A page of `limit` lines is short only at the end, so pagers that stop at a short page (the
    SDK, the CLI, read_all, the followers) never stop at the gap."""
    job_id, sent = await capped_job(db)
    got = await check(db, job_id, sent)
    h = next(x[0] for x in got if x[1] == "system") - 1
    for limit in (1, 2, 7, 64, 1000, 10_000):
        out: list[Row] = []
        after = 0
        while page := await logstore.read(db, job_id, after, limit):
            out += [(x.seq, x.stream, x.text) for x in page]
            if len(page) < limit:
                break
            after = page[-1].seq
        assert out == got, limit
    t = got[h + 1][0]  # the first line of the tail
    for after in (h, h + 1, h + 2, t - 2, t - 1):
        assert [(x.seq, x.stream, x.text) for x in await logstore.read(db, job_id, after, 3)] == [
            x for x in got if x[0] > after
        ][:3], after
    assert await logstore.read(db, job_id, sent[-1][0], 10) == []


async def test_resends_after_trimming_store_nothing_twice_and_the_job_goes_on(db: asyncpg.Connection) -> None:
    job_id, sent = await capped_job(db)
    await check(db, job_id, sent)
    before = await job_row(db, job_id)
    last = sent[-1][0]
    # a box that never saw its acks resends from the start, and the last batch again
    assert await logstore.append(db, job_id, batch(1, [out_text(s) for s in range(1, 201)]), cap_bytes=CAP) == last
    assert await logstore.append(db, job_id, batch(last - 49, ERRORS, "stderr"), cap_bytes=CAP) == last
    assert await job_row(db, job_id) == before, "nothing stored twice, nothing dropped twice"
    with pytest.raises(logstore.LogGap) as gap:  # the next expected seq is still log_seq + 1
        await logstore.append(db, job_id, batch(last + 5, ["x"]), cap_bytes=CAP)
    assert gap.value.expected == last + 1
    # an overlapping resend stores only its new lines, and the trimming goes on with one notice
    more = [f"more {i}" for i in range(3000)]
    assert await logstore.append(db, job_id, batch(last - 1, ERRORS[-2:] + more), cap_bytes=CAP) == last + 3000
    sent += [(last + 1 + i, "stdout", t) for i, t in enumerate(more)]
    await check(db, job_id, sent)
    # the control plane's closing line is still stored after a trimmed transcript (dispatch._system_lines)
    report = JobResultReport(timed_out=True, log_seq=sent[-1][0])
    await dispatch._system_lines(db, job_id, report, CAP)
    sent.append((sent[-1][0] + 1, "system", "boxrun: timed out; process group killed"))
    got = await check(db, job_id, sent)
    assert got[-1] == sent[-1]


async def test_the_orgs_cap_wins_over_the_deployments(db: asyncpg.Connection) -> None:
    await db.execute("UPDATE orgs SET transcript_cap_bytes = $2 WHERE id = $1", DEFAULT_ORG, CAP)
    job_id, sent = await capped_job(db, cap=1 << 30)  # the setting: the org's own cap applies
    await check(db, job_id, sent)
    await db.execute("UPDATE orgs SET transcript_cap_bytes = NULL WHERE id = $1", DEFAULT_ORG)
    job_id, sent = await capped_job(db, cap=None)  # the default of 1 GiB: nothing dropped
    assert await stored(db, job_id) == sent
    row = await job_row(db, job_id)
    assert row["log_head_seq"] is None and row["log_stored_bytes"] == row["log_bytes"] == row["chunk_bytes"]


async def test_a_single_line_longer_than_the_cap_is_kept_as_the_tail(db: asyncpg.Connection) -> None:
    job_id = await add_job(db, group="g")
    huge = "y" * (3 * CAP)
    await logstore.append(db, job_id, batch(1, [huge]), cap_bytes=CAP)
    assert await stored(db, job_id) == [(1, "stdout", huge)], "nothing to drop yet: it is the newest"
    await logstore.append(db, job_id, batch(2, ["after"]), cap_bytes=CAP)
    got = await stored(db, job_id)
    assert got == [(1, "system", logstore.notice(1, 3 * CAP + 1, CAP)), (2, "stdout", "after")]
    row = await job_row(db, job_id)
    assert (row["log_head_seq"], row["log_dropped_lines"], row["log_seq"]) == (0, 1, 2)
    assert row["log_stored_bytes"] == row["chunk_bytes"]


def test_sizes_read_well() -> None:
    assert [logstore.size_text(n) for n in (17, 1024, 1536, 851_859_866, 1 << 30)] == [
        "17 B",
        "1 KiB",
        "1.5 KiB",
        "812.4 MiB",
        "1 GiB",
    ]
    assert logstore.notice(1, 10, 1 << 30).startswith("[boxrun] 1 line (10 B) dropped here")
    assert len(logstore.notice(2**62, 2**62, 2**62)) < logstore.NOTICE_MAX_BYTES


# ------------------------------------------------------------------ through the API


async def test_the_api_reads_a_capped_transcript_whole(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id, sent = await capped_job(db)
    got = await check(db, job_id, sent)
    assert (await api.post(f"/api/jobs/{job_id}/cancel")).status_code == 202
    out: list[Row] = []
    after = 0
    while True:
        resp = await api.get(f"/api/jobs/{job_id}/logs", params={"after": after, "limit": 7})
        assert resp.status_code == 200, resp.text
        page = [(d["seq"], d["stream"], d["text"]) for d in resp.json()["data"]]
        out += page
        if len(page) < 7:
            break
        after = page[-1][0]
    assert out == got
    resp = await api.get(f"/api/jobs/{job_id}/logs", params={"tail": 50, "stream": "stderr"})
    assert [d["text"] for d in resp.json()["data"]] == ERRORS
    text = await api.get(f"/api/jobs/{job_id}/logs.txt")
    assert text.status_code == 200 and text.text == "".join(x[2] + "\n" for x in got)
    # the archive holds the same lines (head, notice, tail)
    key, lines, _ = await write_archive(app.state.pool, app.state.storage, job_id)
    assert key is not None and lines == len(got)
    redirect = await api.get(f"/api/jobs/{job_id}/logs/archive")
    assert redirect.status_code == 307, redirect.text
    async with httpx.AsyncClient() as s3:
        blob = await s3.get(redirect.headers["location"])
    assert blob.status_code == 200
    archived = [json.loads(x) for x in gzip.decompress(blob.content).decode().splitlines()]
    assert [(x["seq"], x["stream"], x["text"]) for x in archived] == got
    # the SSE replay of the ended job: every stored line once, in order, then done
    sse = await api.get(f"/api/jobs/{job_id}/logs/stream")
    seqs = [int(x[4:]) for x in sse.text.splitlines() if x.startswith("id: ")]
    assert seqs == [x[0] for x in got] and f'"last_seq": {sent[-1][0]}' in sse.text


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 37 lines and a ring of ~100 lines: followers cross the gap in the ring, in
    Postgres pages, and from one to the other."""
    monkeypatch.setattr(tail_mod, "PAGE", 37)
    monkeypatch.setattr(follow_mod, "PAGE", 37)
    monkeypatch.setattr(tail_mod, "RING_BYTES", 100 * 200)


async def follow(app: FastAPI, job_id: str, after: int, *, joined: bool) -> tuple[list[int], dict]:
    follower = Follower(
        app.state.tails, app.state.pool, DEFAULT_ORG, job_id, after=after, keepalive_s=30, stall_s=30, joined=joined
    )
    seqs: list[int] = []
    done: dict = {}
    try:
        async with asyncio.timeout(60):
            async for b in follower.batches():
                if joined:  # SSE: one write per batch
                    for block in b.sse().decode().split("\n\n"):
                        fields = dict(x.split(": ", 1) for x in block.splitlines() if not x.startswith(":"))
                        if fields.get("event") == "log":
                            seqs.append(json.loads(fields["data"])["seq"])
                        elif fields.get("event") == "done":
                            done = json.loads(fields["data"])
                    continue
                for message in b.ws():  # WebSocket: one message per line
                    event = json.loads(message)
                    if event["event"] == "log":
                        seqs.append(event["data"]["seq"])
                    elif event["event"] == "done":
                        done = event["data"]
    finally:
        follower.close()
    return seqs, done


async def test_followers_of_an_ended_capped_job_get_every_kept_line_once(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, small_pages: None
) -> None:
    job_id, sent = await capped_job(db)
    got = await check(db, job_id, sent)
    assert (await api.post(f"/api/jobs/{job_id}/cancel")).status_code == 202
    h = next(x[0] for x in got if x[1] == "system") - 1
    for after in (0, 5, h, h + 1, h + 3, got[-60][0]):
        for joined in (True, False):
            seqs, done = await follow(app, job_id, after, joined=joined)
            assert seqs == [x[0] for x in got if x[0] > after], (after, joined)
            assert done == {"state": "cancelled", "last_seq": sent[-1][0]}


async def test_a_live_follower_sees_lines_as_they_come_while_the_cap_trims(
    app: FastAPI, api: httpx.AsyncClient, db: asyncpg.Connection, small_pages: None
) -> None:
    """It may see lines that are dropped later (the cap is about what is kept); it never sees a
    line twice or out of order, and it gets the last lines and `done`."""
    job_id = await add_job(db, group="g")
    watcher = asyncio.create_task(follow(app, job_id, 0, joined=False))
    sent: list[Row] = []
    for first in range(1, 4001, 100):
        texts = [out_text(s) for s in range(first, first + 100)]
        await logstore.append(db, job_id, batch(first, texts), cap_bytes=CAP)
        sent += [(first + i, "stdout", t) for i, t in enumerate(texts)]
        await asyncio.sleep(0.01 if first % 700 else 0.3)  # now and then the follower catches up
    first = len(sent) + 1
    await logstore.append(db, job_id, batch(first, ERRORS, "stderr"), cap_bytes=CAP)
    sent += [(first + i, "stderr", t) for i, t in enumerate(ERRORS)]
    got = await check(db, job_id, sent)
    assert (await api.post(f"/api/jobs/{job_id}/cancel")).status_code == 202
    seqs, done = await watcher
    assert seqs == sorted(set(seqs)), "in order, never twice"
    assert seqs[-50:] == [x[0] for x in sent[-50:]] and done["last_seq"] == sent[-1][0]
    kept_tail = [x[0] for x in got if x[0] > got[-1][0] - 200]
    assert set(kept_tail) <= set(seqs)
