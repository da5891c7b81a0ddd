import asyncio

import httpx
import pytest

from boxrun.agent.logpump import LogPump
from boxrun.logbatch import Batch


class FlakySinkFake:
    """Test double for the API ingest: fails the first `failures` sends, records the rest."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[dict]] = []
        self.stored: dict[int, dict] = {}

    async def send(self, job_id, first_seq, runs, data) -> int:
        if self.failures:
            self.failures -= 1
            raise httpx.ConnectError("api down")
        lines = [
            {"seq": seq, "ts": t, "stream": s, "text": x} for seq, t, s, x in Batch(first_seq, runs, data).unpack()
        ]
        self.batches.append(lines)
        for line in lines:
            self.stored.setdefault(line["seq"], line)
        return max(self.stored)


async def test_seqs_are_contiguous_across_streams_and_close_waits_for_acks():
    sink = FlakySinkFake()
    pump = LogPump(sink, "j1", max_lines=7)
    pump.start()
    for i in range(100):
        pump.add("stdout" if i % 3 else "stderr", f"line {i}")
    await pump.close()
    assert sorted(sink.stored) == list(range(1, 101))
    assert [sink.stored[s]["text"] for s in range(1, 101)] == [f"line {i}" for i in range(100)]
    assert sink.stored[1]["stream"] == "stderr" and sink.stored[2]["stream"] == "stdout"
    assert all(len(b) <= 7 for b in sink.batches)
    assert pump.acked == 100


async def test_failed_batches_are_resent_until_acknowledged():
    sink = FlakySinkFake(failures=3)
    pump = LogPump(sink, "j1")
    pump.start()
    pump.add("stdout", "survives")
    await asyncio.wait_for(pump.close(), 10)
    assert [line["text"] for line in sink.stored.values()] == ["survives"]
    assert pump.acked == 1


@pytest.mark.parametrize("count", [0, 1])
async def test_close_with_little_or_nothing_pending(count):
    sink = FlakySinkFake()
    pump = LogPump(sink, "j1")
    pump.start()
    for _ in range(count):
        pump.add("stdout", "x")
    await asyncio.wait_for(pump.close(), 5)
    assert len(sink.stored) == count


async def test_close_ticks_while_the_api_is_away_then_delivers():
    sink = FlakySinkFake(failures=4)  # ~50+100+200+400 ms of outage
    pump = LogPump(sink, "j1")
    pump.start()
    pump.add("stdout", "late but whole")
    ticks = []
    await asyncio.wait_for(pump.close(tick_s=0.05, on_tick=lambda: ticks.append(1)), 10)
    assert ticks, "the caller must be able to heartbeat while waiting"
    assert [line["text"] for line in sink.stored.values()] == ["late but whole"]


async def test_a_permanent_refusal_is_raised_not_retried_forever():
    from boxrun.agent.logpump import LogRejected

    class RefusingSinkFake:
        calls = 0

        async def send(self, job_id, first_seq, runs, data):
            RefusingSinkFake.calls += 1
            raise LogRejected("HTTP 403")

    pump = LogPump(RefusingSinkFake(), "j1")
    pump.start()
    pump.add("stdout", "x")
    with pytest.raises(LogRejected):
        await asyncio.wait_for(pump.close(), 5)
    assert RefusingSinkFake.calls == 1


async def test_lines_past_the_memory_bound_spill_to_disk_and_arrive_in_order(tmp_path):
    sink = FlakySinkFake(failures=6)  # the API is away while the job keeps printing
    spill = tmp_path / "logs.spill"
    pump = LogPump(sink, "j1", max_lines=100, memory_limit=2_000, spill_path=spill)
    pump.start()
    for i in range(5000):
        pump.add("stderr" if i % 7 == 0 else "stdout", f"line {i} " + "y" * (i % 50))
    assert pump.spilled and spill.stat().st_size > 0, "past the bound, lines go to disk"
    await asyncio.wait_for(pump.close(), 30)
    assert sorted(sink.stored) == list(range(1, 5001))
    assert [sink.stored[i + 1]["text"] for i in range(5000)] == [f"line {i} " + "y" * (i % 50) for i in range(5000)]
    assert sink.stored[1]["stream"] == "stderr" and sink.stored[2]["stream"] == "stdout"
    assert not spill.exists(), "the spill file is removed once everything is delivered"


async def test_a_block_over_the_line_bound_is_split_across_batches():
    sink = FlakySinkFake()
    pump = LogPump(sink, "j1", max_lines=7)
    pump.start()
    pump.add_block("stdout", b"".join(b"l%d\n" % i for i in range(20)), 20)
    pump.add("stderr", "two\nparts")
    await asyncio.wait_for(pump.close(), 5)
    assert [sink.stored[s]["text"] for s in range(1, 22)] == [f"l{i}" for i in range(20)] + ["two parts"]
    assert sink.stored[21]["stream"] == "stderr"
    assert all(len(b) <= 7 for b in sink.batches) and len(sink.batches) >= 3
