"""Log chunks on a real PostgreSQL: append exactly once, replay from any seq, and the 0004 migration."""

import importlib
import uuid

import asyncpg
import pytest

from boxrun import logstore
from boxrun.db import connect
from boxrun.logbatch import Batch
from tests.integration.helpers import add_box, add_job

migrations = importlib.import_module("boxrun.db.migrate")  # the module; boxrun.db.migrate is also its function


def batch(first: int, texts: list[str], stream: str = "stdout", ts: float = 100.0) -> Batch:
    return Batch(first, [(len(texts), stream, ts)], "".join(t + "\n" for t in texts).encode())


async def test_resends_are_dropped_and_replay_starts_anywhere(conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    assert await logstore.append(conn, job, batch(1, ["a", "b", "c"])) == 3
    assert await logstore.append(conn, job, batch(1, ["a", "b"])) == 3, "a resend stores nothing"
    # an overlapping resend with more lines keeps the stored ones and adds the rest
    assert await logstore.append(conn, job, batch(2, ["b", "c", "nul \x00 inside", "é"], "stderr", 101.0)) == 5
    with pytest.raises(logstore.LogGap) as gap:
        await logstore.append(conn, job, batch(9, ["x"]))
    assert gap.value.expected == 6
    lines = await logstore.read(conn, job, 0, 100)
    assert [(x.seq, x.stream, x.text, x.ts) for x in lines] == [
        (1, "stdout", "a", 100.0),
        (2, "stdout", "b", 100.0),
        (3, "stdout", "c", 100.0),
        (4, "stderr", "nul \x00 inside", 101.0),
        (5, "stderr", "é", 101.0),
    ]
    for after in range(6):
        for limit in (1, 2, 10):
            assert await logstore.read(conn, job, after, limit) == lines[after : after + limit]


async def test_a_big_batch_is_stored_in_pieces_and_read_back_from_anywhere(conn):
    await add_box(conn, "b1")
    job = await add_job(conn, box="b1")
    texts = [f"{i:06d} " + "z" * (i % 300) for i in range(20_000)]  # ~3.1 MB
    big = Batch(1, [(7_000, "stdout", 1.0), (13_000, "stderr", 2.0)], "".join(t + "\n" for t in texts).encode())
    assert await logstore.append(conn, job, big) == 20_000
    sizes = await conn.fetch(
        "SELECT first_seq, last_seq, octet_length(data) AS n FROM log_chunks WHERE job_id = $1 ORDER BY first_seq", job
    )
    assert len(sizes) > 10 and all(r["n"] <= logstore.CHUNK_BYTES for r in sizes)
    assert [r["first_seq"] for r in sizes[1:]] == [r["last_seq"] + 1 for r in sizes[:-1]]
    for after, limit in [(0, 10_000), (6_990, 20), (12_345, 1000), (19_999, 5), (20_000, 5)]:
        got = await logstore.read(conn, job, after, limit)
        want = texts[after : after + limit]
        assert [x.text for x in got] == want and [x.seq for x in got] == list(range(after + 1, after + 1 + len(want)))
        assert all(x.stream == ("stdout" if x.seq <= 7_000 else "stderr") for x in got)


async def test_migration_0004_keeps_array_chunks(pg_server, monkeypatch):
    name = f"m_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.admin_url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await connect(pg_server.admin_url(name))
    try:
        every = migrations._migrations()
        monkeypatch.setattr(migrations, "_migrations", lambda: [m for m in every if m[0] < 4])
        await migrations.migrate(conn)
        await add_box(conn, "b1", live=False)  # at schema v3: no agent session yet
        job = await add_job(conn, box="b1")
        await conn.execute(
            "INSERT INTO log_chunks (job_id, first_seq, last_seq, ts, streams, texts, bytes)"
            " VALUES ($1, 1, 3, $2, $3, $4, 9), ($1, 4, 4, $5, $6, $7, 0)",
            job,
            [1.5, 1.5, 2.0],
            ["stdout", "stdout", "stderr"],
            ["one", "two\nlines", "drei ü"],
            [3.0],
            ["system"],
            [""],
        )
        await conn.execute("UPDATE jobs SET log_seq = 4 WHERE id = $1", job)
        monkeypatch.setattr(migrations, "_migrations", lambda: every)
        assert await migrations.migrate(conn) == [m[1] for m in every if m[0] >= 4]
        got = [(x.seq, x.ts, x.stream, x.text) for x in await logstore.read(conn, job, 0, 10)]
        assert got == [
            (1, 1.5, "stdout", "one"),
            (2, 1.5, "stdout", "two lines"),
            (3, 2.0, "stderr", "drei ü"),
            (4, 3.0, "system", ""),
        ]
        assert await logstore.append(conn, job, batch(5, ["after"])) == 5
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
