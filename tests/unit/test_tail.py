"""The shared job tail and its followers: wire encoding, the ring, and a follower's switch between
the ring and Postgres. The transcript table is an in-memory stand-in here (`Store`); the
integration tests (tests/integration/test_follow_fanout.py) run the same code on the real stack."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import httpx
import pytest

from boxrun import logstore
from boxrun.api.live import follower as follow_mod
from boxrun.api.live import job_tail as tail_mod
from boxrun.api.live.follower import Batch, Follower
from boxrun.api.live.job_tail import Ring, Tails, encode_event, encode_log, ws_message
from boxrun.api.live.listener import Notifier
from boxrun.client import read_events
from boxrun.constants import CHANNEL_LOGS, JobState
from boxrun.logstore import Line

JOB = "6f1c1f0e-0000-4000-8000-000000000001"
ORG = "org-1"


def line(seq: int, text: str | None = None, stream: str = "stdout") -> Line:
    ts = 1_700_000_000.5 + seq % 1000 / 1e6  # never a whole second: every ts the same length
    return Line(seq, ts, stream, f"line {seq}" if text is None else text)


def parse_sse(data: bytes) -> list[tuple[str, str | None, object]]:
    """(event, id, data) of every event in SSE bytes; comments as ("comment", None, text)."""
    out = []
    for block in data.decode().split("\n\n")[:-1]:
        if block.startswith(":"):
            out.append(("comment", None, block[1:].strip()))
            continue
        fields = dict(f.split(": ", 1) for f in block.split("\n"))
        out.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return out


# ------------------------------------------------------------------ encoding


def test_a_line_is_encoded_once_into_the_sse_bytes_of_its_public_json():
    ln = line(7, 'a "quoted"\ttab, \r bare CR, \u2028 separator, é and \U0001f600', stream="stderr")
    wire = encode_log(ln)
    assert wire == b"id: 7\nevent: log\ndata: " + json.dumps(ln.public()).encode() + b"\n\n"
    assert wire.isascii() and wire.count(b"\n") == 4, "one data line whatever the text holds"
    assert json.loads(ws_message(wire)) == {"event": "log", "id": 7, "data": ln.public()}


async def test_the_product_reader_parses_a_chunk_of_many_events():
    chunk = (
        b"".join(encode_log(line(i)) for i in range(1, 4))
        + b": keepalive\n\n"
        + encode_event("state", {"state": "completed"})
        + encode_event("done", {"state": "completed", "last_seq": 3})
    )
    events = [ev async for ev in read_events(httpx.Response(200, content=chunk))]
    assert [(ev.event, ev.id) for ev in events] == [
        ("log", "1"),
        ("log", "2"),
        ("log", "3"),
        ("state", None),
        ("done", None),
    ]
    assert [ev.data for ev in events[:3]] == [line(i).public() for i in range(1, 4)]
    assert events[-1].data == {"state": "completed", "last_seq": 3}


def test_a_batch_is_one_chunk_for_sse_and_one_message_per_event_for_websocket():
    lines = [encode_log(line(i)) for i in (4, 5)]
    sse = Batch(lines=b"".join(lines), state=JobState.COMPLETED, done={"state": "completed", "last_seq": 5}).sse()
    assert parse_sse(sse) == [
        ("log", "4", line(4).public()),
        ("log", "5", line(5).public()),
        ("state", None, {"state": "completed"}),
        ("done", None, {"state": "completed", "last_seq": 5}),
    ]
    ws = [json.loads(m) for m in Batch(lines=lines, state=JobState.RUNNING).ws()]
    assert ws == [
        {"event": "log", "id": 4, "data": line(4).public()},
        {"event": "log", "id": 5, "data": line(5).public()},
        {"event": "state", "id": None, "data": {"state": "running"}},
    ]
    assert parse_sse(Batch(keepalive=True).sse()) == [("comment", None, "keepalive")]
    assert json.loads(Batch(keepalive=True).ws()[0]) == {"event": "keepalive", "id": None, "data": None}


# ------------------------------------------------------------------ the ring


def encoded(first: int, last: int, width: int = 0) -> list[bytes]:
    return [encode_log(line(i, f"{i:0{width}d}" if width else None)) for i in range(first, last + 1)]


def test_slicing_from_a_cursor_in_the_middle_of_a_page():
    ring = Ring(0)
    page = encoded(1, 10)
    ring.append(1, page)
    assert (ring.first, ring.head, len(ring)) == (1, 10, 10)
    assert ring.lines_after(4) == page[4:]
    assert ring.bytes_after(4) == (b"".join(page[4:]), 10)
    assert ring.bytes_after(4)[0] is ring.bytes_after(4)[0], "followers at one cursor share one bytes object"
    assert ring.bytes_after(10) == (b"", 10) and ring.bytes_after(12) == (b"", 12)
    more = encoded(11, 12)
    ring.append(11, more)
    assert ring.bytes_after(4) == (b"".join(page[4:] + more), 12), "the cached slice is dropped when the ring moves"
    with pytest.raises(ValueError, match="cannot take seq 14"):
        ring.append(14, encoded(14, 14))


def test_a_ring_may_start_anywhere():
    ring = Ring(500)
    assert ring.holds(500) and ring.holds(900) and not ring.holds(499)
    ring.append(501, encoded(501, 503))
    assert ring.lines_after(501) == encoded(502, 503)


def test_the_oldest_lines_are_evicted_past_the_byte_bound_and_the_newest_always_stays():
    size = len(encode_log(line(101, "x" * 10)))  # every seq here has three digits: every line this size
    ring = Ring(100, max_bytes=3 * size + 1)
    for i in range(101, 111):
        ring.append(i, [encode_log(line(i, "x" * 10))])
    assert (ring.first, ring.head, ring.nbytes) == (108, 110, 3 * size)
    assert ring.holds(107) and not ring.holds(106)
    with pytest.raises(ValueError, match="has left the ring"):
        ring.lines_after(106)
    big = encode_log(line(111, "y" * (10 * size)))
    ring.append(111, [big])
    assert (ring.first, ring.head) == (111, 111) and ring.lines_after(110) == [big]


def test_eviction_over_many_appends_keeps_the_ring_exact_and_compact():
    base = 100_000  # seqs of six digits: every line the same size
    size = len(encoded(base + 1, base + 1)[0])
    ring = Ring(base, max_bytes=50 * size)
    seq = base
    for n in [1, 3, 7, 40, 1, 100, 2] * 60:
        ring.append(seq + 1, encoded(seq + 1, seq + n))
        seq += n
        assert ring.head == seq and len(ring) == min(50, seq - base) and ring.nbytes == len(ring) * size
        after = max(base, seq - 5)
        assert ring.lines_after(after) == encoded(after + 1, seq)
        assert len(ring._lines) <= 2 * 1024 + 200, "evicted entries are compacted away"
    assert ring.lines_after(ring.first - 1) == encoded(ring.first, seq)


def test_one_write_takes_at_most_a_chunk_of_the_ring_but_always_a_line():
    size = len(encode_log(line(1)))  # seqs 1-9: every line this size
    ring = Ring(0, chunk_bytes=3 * size)
    ring.append(1, encoded(1, 9))
    assert ring.bytes_after(0) == (b"".join(encoded(1, 3)), 3)
    assert ring.bytes_after(7) == (b"".join(encoded(8, 9)), 9)
    ring = Ring(0, chunk_bytes=10)
    ring.append(1, encoded(1, 2))
    assert ring.bytes_after(0) == (encoded(1, 1)[0], 1)


def test_a_ring_takes_a_gap_of_seqs_and_slices_across_it():
    """A transcript past its cap (docs/retention.md) has a gap of seqs the tail never read."""
    ring = Ring(0)
    before, after = encoded(1, 3), encoded(900, 902)
    ring.append(1, before + after, seqs=[1, 2, 3, 900, 901, 902])
    assert (ring.first, ring.head, len(ring)) == (1, 902, 6)
    assert ring.holds(0) and ring.lines_after(2) == before[2:] + after
    assert ring.slice_after(3) == (after, 902) and ring.slice_after(500) == (after, 902), "a cursor in the gap"
    assert ring.bytes_after(3) == (b"".join(after), 902)
    ring.append(903, encoded(903, 903))  # contiguous again
    assert ring.slice_after(901) == (encoded(902, 903), 903)
    with pytest.raises(ValueError, match="cannot take seqs from 903"):
        ring.append(0, encoded(903, 903), seqs=[903])


def test_a_gapped_ring_evicts_by_seq_and_slices_by_bytes():
    size = len(encode_log(line(101, "x" * 10)))  # three-digit seqs: every line this size
    ring = Ring(100, max_bytes=3 * size + 1, chunk_bytes=2 * size)
    ring.append(0, [encode_log(line(i, "x" * 10)) for i in (101, 102)], seqs=[101, 102])
    ring.append(0, [encode_log(line(i, "x" * 10)) for i in (500, 501, 502)], seqs=[500, 501, 502])
    assert (ring.first, ring.floor, ring.head, len(ring)) == (500, 102, 502, 3)
    assert ring.holds(102) and ring.holds(300) and not ring.holds(101), "every line after the last evicted"
    assert ring.slice_after(102) == ([encode_log(line(i, "x" * 10)) for i in (500, 501)], 501)
    assert ring.bytes_after(200)[1] == 501 and ring.bytes_after(501)[1] == 502
    with pytest.raises(ValueError, match="has left the ring"):
        ring.lines_after(101)


# ------------------------------------------------------------------ tail and followers


class Store:
    """Stands in for the job's row and transcript (logstore.read, Q.job_state); counts the reads
    followers make themselves (the tail's task is named "tail <job>")."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.state = JobState.RUNNING
        self.follower_reads = 0
        self.tail_reads = 0
        self.fail_next: list[BaseException] = []

    def add(self, n: int) -> None:
        start = len(self.lines)
        self.lines += [line(start + i + 1) for i in range(n)]

    async def read(self, conn, job_id: str, after: int, limit: int) -> list[Line]:
        assert job_id == JOB
        if self.fail_next:
            raise self.fail_next.pop(0)
        if asyncio.current_task().get_name().startswith("tail "):
            self.tail_reads += 1
        else:
            self.follower_reads += 1
        await asyncio.sleep(0)  # a real read yields to the loop too
        return self.lines[after : after + limit]

    async def fetchval(self, query: str, org_id: str, job_id: str) -> str:
        assert (org_id, job_id) == (ORG, JOB)
        return self.state.value

    @asynccontextmanager
    async def acquire(self):
        yield self


@pytest.fixture
def store(monkeypatch) -> Store:
    s = Store()
    monkeypatch.setattr(logstore, "read", s.read)
    return s


@pytest.fixture
def notifier() -> Notifier:
    return Notifier()  # never started: the tests deliver NOTIFYs themselves


@pytest.fixture
def tails(notifier: Notifier) -> Tails:
    return Tails(notifier)


def notify(notifier: Notifier) -> None:
    notifier._on_notify(None, 0, CHANNEL_LOGS, JOB)


def follower(tails: Tails, store: Store, after: int = 0, **kw) -> Follower:
    kw.setdefault("keepalive_s", 30)
    kw.setdefault("stall_s", 30)
    return Follower(tails, store, ORG, JOB, after=after, **kw)


async def take(batches) -> Batch:
    return await asyncio.wait_for(anext(batches), 5)


class Seen:
    """What one follower has received, checked as it arrives."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.states: list[str] = []
        self.done: dict | None = None

    def add(self, batch: Batch) -> Batch:
        for event, ident, data in parse_sse(batch.sse()):
            if event == "log":
                assert data == line(int(ident)).public()
                self.seqs.append(data["seq"])
            elif event == "state":
                self.states.append(data["state"])
            elif event == "done":
                self.done = data
        assert self.seqs == list(range(1, len(self.seqs) + 1)), "in order, no gap, no duplicate"
        return batch

    async def until(self, batches, seq: int) -> None:
        while not self.seqs or self.seqs[-1] < seq:
            self.add(await take(batches))


async def test_a_follower_behind_the_ring_reads_postgres_then_joins_the_ring(store, notifier, tails, monkeypatch):
    monkeypatch.setattr(tail_mod, "RING_BYTES", 10 * len(encode_log(line(10))))
    monkeypatch.setattr(follow_mod, "PAGE", 7)
    fast, slow = follower(tails, store), follower(tails, store)
    fb, sb = fast.batches(), slow.batches()
    f_seen, s_seen = Seen(), Seen()
    assert f_seen.add(await take(fb)).state == JobState.RUNNING
    assert s_seen.add(await take(sb)).state == JobState.RUNNING
    for _ in range(12):  # the fast one keeps up, five lines at a time; the slow one takes nothing
        store.add(5)
        notify(notifier)
        await f_seen.until(fb, len(store.lines))
    assert store.follower_reads == 0, "a follower inside the ring never reads Postgres"
    tail = tails.get(JOB)
    assert tail.ring.first > 30 and not tail.ring.holds(slow.cursor)

    s_seen.add(await take(sb))
    assert s_seen.seqs == list(range(1, 8)) and store.follower_reads == 1, "one page of its own"
    await s_seen.until(sb, 60)
    reads = store.follower_reads
    assert 1 < reads < 9 and tail.ring.holds(slow.cursor), "back in the ring before the end of the transcript"

    store.add(4)
    store.state = JobState.COMPLETED
    notify(notifier)
    for seen, batches in ((f_seen, fb), (s_seen, sb)):
        batch = seen.add(await take(batches))
        assert seen.seqs == list(range(1, 65)) and seen.states == ["running", "completed"]
        assert batch.done == seen.done == {"state": "completed", "last_seq": 64}, "lines, state and done in one write"
    assert store.follower_reads == reads, "the slow follower read its last lines from the ring"
    fast.close()
    assert tails.get(JOB) is tail
    slow.close()
    assert len(tails) == 0 and not notifier._subs, "the tail closes with its last follower"


async def test_one_tail_reads_each_line_once_for_every_follower(store, notifier, tails):
    followers = [follower(tails, store) for _ in range(20)]
    gens = [f.batches() for f in followers]
    seen = [Seen() for _ in followers]
    for s, g in zip(seen, gens):
        s.add(await take(g))
    for _ in range(5):
        store.add(3)
        notify(notifier)
        for s, g in zip(seen, gens):
            await s.until(g, len(store.lines))
    assert store.follower_reads == 0
    assert store.tail_reads <= 1 + 5 + 2, "one read per wake-up, not one per follower"
    assert all(s.seqs == list(range(1, 16)) for s in seen)
    for f in followers:
        f.close()


async def test_a_follower_of_an_ended_job_gets_the_replay_and_done_in_one_write(store, notifier, tails):
    store.add(30)
    store.state = JobState.FAILED
    f = follower(tails, store)
    seen = Seen()
    batch = seen.add(await take(f.batches()))
    assert seen.seqs == list(range(1, 31)) and seen.states == ["failed"]
    assert batch.done == {"state": "failed", "last_seq": 30}
    f.close()
    resumed = follower(tails, store, after=25)
    assert parse_sse((await take(resumed.batches())).sse())[0] == ("log", "26", line(26).public())
    resumed.close()


async def test_the_tail_pages_through_a_backlog_as_followers_take_it(store, notifier, tails):
    store.add(2500)
    f = follower(tails, store)
    seen = Seen()
    await seen.until(f.batches(), 2500)
    assert store.follower_reads == 0 and store.tail_reads == 3
    assert seen.states == ["running"], "the state once the backlog is read"
    f.close()


async def test_lines_after_a_terminal_state_are_drained_before_done(store, notifier, tails):
    f = follower(tails, store)
    batches = f.batches()
    seen = Seen()
    seen.add(await take(batches))
    store.add(3)
    store.state = JobState.COMPLETED  # the NOTIFY of these lines and the state change come together
    notify(notifier)
    seen.add(await take(batches))
    assert seen.seqs == [1, 2, 3] and seen.done == {"state": "completed", "last_seq": 3}
    f.close()


async def test_idle_followers_get_keepalives_and_a_lost_notify_is_caught_by_the_recheck(store, notifier, tails):
    f = follower(tails, store, keepalive_s=0.05)
    batches = f.batches()
    assert (await take(batches)).state == JobState.RUNNING
    assert (await take(batches)).keepalive
    store.add(2)  # no NOTIFY: the tail re-reads every keepalive_s all the same
    seen = Seen()
    while len(seen.seqs) < 2:
        seen.add(await take(batches))
    f.close()


async def test_a_listen_reconnect_wakes_the_tail(store, notifier, tails):
    f = follower(tails, store)
    batches = f.batches()
    await take(batches)
    store.add(1)
    notifier._wake_all()
    assert parse_sse((await take(batches)).sse()) == [("log", "1", line(1).public())]
    f.close()


async def test_the_tail_retries_while_postgres_is_unavailable(store, notifier, tails):
    store.add(2)
    store.fail_next = [OSError("connection refused"), ConnectionResetError("reset")]
    f = follower(tails, store)
    seen = Seen()
    await seen.until(f.batches(), 2)
    assert store.fail_next == []
    f.close()


async def test_a_tail_that_breaks_ends_its_followers_and_is_replaced(store, notifier, tails):
    store.fail_next = [ZeroDivisionError("a bug")]
    f = follower(tails, store)
    with pytest.raises(RuntimeError, match="tail of job .* failed"):
        await take(f.batches())
    again = follower(tails, store)
    assert (await take(again.batches())).state == JobState.RUNNING, "a new follower gets a new tail"
    f.close()
    again.close()
    assert len(tails) == 0


async def test_a_websocket_follower_takes_lines_one_by_one(store, notifier, tails):
    store.add(3)
    f = follower(tails, store, joined=False)
    batch = await take(f.batches())
    assert [json.loads(m)["id"] for m in batch.ws()] == [1, 2, 3, None]
    f.close()


class SendRecorder:
    """Stands in for the ASGI `send` of one response: records every message, sets `first_body`
    at the first body message, and from message number `block_at` on never returns (a client
    that stopped reading)."""

    def __init__(self, block_at: int | None = None) -> None:
        self.sent: list[dict] = []
        self.first_body = asyncio.Event()
        self.block_at = block_at

    async def __call__(self, message: dict) -> None:
        self.sent.append(message)
        if len(self.sent) == 2:
            self.first_body.set()
        if len(self.sent) == self.block_at:
            await asyncio.Event().wait()


async def test_a_stalled_sse_client_gets_dropped_with_its_resume_point_and_is_closed(store, notifier, tails):
    from boxrun.api.routes.logs import EventStream

    store.add(3)
    f = follower(tails, store, stall_s=0.2)
    send = SendRecorder(block_at=3)  # the client stops reading: the third write never finishes
    sent = send.sent
    streaming = asyncio.create_task(EventStream(f).stream_response(send))
    await asyncio.wait_for(send.first_body.wait(), 5)
    assert [e[1] for e in parse_sse(sent[1]["body"]) if e[0] == "log"] == ["1", "2", "3"]
    store.add(2)
    notify(notifier)
    await asyncio.wait_for(streaming, 5)
    assert len(sent) == 4 and sent[3]["more_body"] is False
    assert parse_sse(sent[3]["body"]) == [("dropped", None, {"reason": "follower too slow", "resume_after": 3})], (
        "resume after the last line written, not the one stuck"
    )
    assert len(tails) == 0, "the follower is closed"


async def test_a_client_that_leaves_ends_its_stream_and_closes_the_follower(store, notifier, tails):
    from boxrun.api.routes.logs import EventStream

    f = follower(tails, store)
    send = SendRecorder()
    sent = send.sent
    streaming = asyncio.create_task(EventStream(f).stream_response(send))
    await asyncio.wait_for(send.first_body.wait(), 5)  # the state; now it waits for lines
    streaming.cancel()  # what Starlette does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await streaming
    assert len(sent) == 2 and len(tails) == 0


async def test_a_first_follower_past_the_end_does_not_keep_earlier_lines_out_of_the_ring(store, notifier, tails):
    store.add(3)
    ahead = follower(tails, store, after=100, log_head=3)  # e.g. a stale Last-Event-ID
    ahead_batches = ahead.batches()
    await take(ahead_batches)
    behind = follower(tails, store, after=0, log_head=3)
    batches, seen = behind.batches(), Seen()
    seen.add(await take(batches))
    assert seen.seqs == [1, 2, 3]
    reads = store.follower_reads
    store.add(5)
    notify(notifier)
    seen.add(await take(batches))
    assert seen.seqs == list(range(1, 9))
    assert store.follower_reads == reads, "lines 4..8 came from the shared tail, not a read of its own"
    ahead.close()
    behind.close()
