"""The box's secret masking (boxrun/agent/mask.py) and its place in the log pump: a value never
reaches a batch, the spill file or the sink."""

from __future__ import annotations

import asyncio

import pytest

from boxrun.agent.lines import LineFramer
from boxrun.agent.logpump import LogPump
from boxrun.agent.mask import MASK, MIN_LINE, Masker, patterns


def masked(values: list[str], text: str) -> str:
    return Masker(values).mask(text.encode()).decode()


def test_every_occurrence_becomes_stars() -> None:
    assert masked(["hunter22"], "pw=hunter22 again hunter22\nnothing\n") == "pw=*** again ***\nnothing\n"
    assert masked(["hunter22"], "no secret here\n") == "no secret here\n"


def test_no_values_leaves_data_alone() -> None:
    masker = Masker([])
    assert not masker
    assert masker.mask(b"anything\n") == b"anything\n"


def test_overlapping_values_leave_nothing_of_either() -> None:
    # sequential replacement would leave "gh" (the end of the second value) visible
    assert masked(["abcdef", "cdefgh"], "xx abcdefgh yy\n") == "xx *** yy\n"
    # one value inside another
    assert masked(["secret", "secret-longer"], "a secret-longer b secret\n") == "a *** b ***\n"
    # a value overlapping itself
    assert masked(["aaaa"], "aaaaaa\n") == "***\n"


def test_a_value_at_the_edges_and_unicode() -> None:
    assert masked(["pässwörd"], "pässwörd\n") == "***\n"
    assert masked(["pässwörd"], "→pässwörd←\n") == "→***←\n"


def test_short_one_line_values_are_masked_too() -> None:
    assert masked(["ab"], "cab ab\n") == "c*** ***\n"


def test_a_multi_line_value_is_masked_line_by_line() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n  bm90IGEgcmVhbCBrZXk=\n-----END KEY-----\n"
    out = masked([key], "printing:\n" + key + "done\n")
    assert out == "printing:\n***\n***\n  ***\n***\ndone\n"
    # a value split across output lines differently from its own lines: each of its lines still goes
    assert "MIIEvQ" not in masked([key], "x MIIEvQIBADANBgkqhkiG9w0BAQEFAASC y\n")


def test_structure_lines_of_a_multi_line_value_are_not_patterns() -> None:
    doc = '{\n  "type": "service_account",\n  "k": 1\n}\n'
    pats = patterns([doc])
    assert b"{" not in pats and b"}" not in pats
    assert b'"type": "service_account",' in pats and b'"k": 1' in pats
    assert len(b'"k": 1') >= MIN_LINE
    assert masked([doc], "a {b} c\n") == "a {b} c\n"


def test_a_trailing_newline_is_no_second_line() -> None:
    assert patterns(["abc\n"]) == [b"abc"]
    assert patterns(["abc\r\n"]) == [b"abc"]
    assert patterns(["   ", "", "\n"]) == []


def test_the_line_count_never_changes() -> None:
    data = b"s3cr3t\ns3cr3t s3cr3t\n\n"
    out = Masker(["s3cr3t"]).mask(data)
    assert out.count(b"\n") == data.count(b"\n") and out == b"***\n*** ***\n\n"
    assert MASK == b"***"


class Sink:
    def __init__(self) -> None:
        self.data = b""

    async def send(self, job_id: str, first_seq: int, runs: list[tuple[int, str, float]], data: bytes) -> int:
        self.data += data
        return first_seq + sum(r[0] for r in runs) - 1


@pytest.mark.parametrize("spill", [False, True])
async def test_the_pump_masks_before_anything_keeps_a_line(tmp_path, spill: bool) -> None:
    sink = Sink()
    spill_path = tmp_path / "logs.spill"
    pump = LogPump(
        sink,
        "job",
        mask=Masker(["tok-123456"]),
        spill_path=spill_path,
        memory_limit=0 if spill else 64 << 20,
    )
    framer = LineFramer(lambda block, n: pump.add_block("stdout", block, n))
    framer.feed(b"the token is tok-1234")  # a value cut across two reads of the pipe
    framer.feed(b"56 ok\n")
    pump.add_block("stderr", b"again tok-123456\n", 1)
    pump.add_block("stderr", b"more\n", 1)
    if spill:  # the lines went to the spill file: masked there too
        assert pump.spilled and pump._spill is not None
        pump._spill._out.flush()
        on_disk = spill_path.read_bytes()
        assert b"***" in on_disk and b"tok-123456" not in on_disk
    pump.start()
    await asyncio.wait_for(pump.close(), 10)
    assert sink.data == b"the token is *** ok\nagain ***\nmore\n"
    assert pump.acked == 3
