import json

import pytest

from boxrun.logbatch import BadBatch, Batch, decode, encode

RUNS = [(2, "stdout", 10.5), (1, "stderr", 11.0), (2, "output", 12.25)]
DATA = 'a\nb\nerr ü\n{"v":1}\n\n'.encode()


def test_round_trip_and_unpack():
    batch = decode(encode(41, RUNS, DATA))
    assert batch == Batch(41, RUNS, DATA)
    assert (batch.lines, batch.last_seq) == (5, 45)
    assert batch.unpack() == [
        (41, 10.5, "stdout", "a"),
        (42, 10.5, "stdout", "b"),
        (43, 11.0, "stderr", "err ü"),
        (44, 12.25, "output", '{"v":1}'),
        (45, 12.25, "output", ""),
    ]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_skip_drops_the_first_lines_across_runs(n):
    whole = Batch(41, RUNS, DATA)
    assert whole.skip(n).unpack() == whole.unpack()[n:]
    assert whole.skip(n).last_seq == 45


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"no header at all", "one-line JSON header"),
        (b"[1, 2]\n", "invalid header"),
        (json.dumps({"first_seq": 0, "runs": []}).encode() + b"\n", "first_seq"),
        (json.dumps({"first_seq": 1, "runs": [[1, "tty", 1.0]]}).encode() + b"\nx\n", "runs.0.1"),
        (json.dumps({"first_seq": 1, "runs": [[0, "stdout", 1.0]]}).encode() + b"\n", "runs.0.0"),
        (json.dumps({"first_seq": 1, "runs": [[2, "stdout", 1.0]]}).encode() + b"\nonly one\n", "count 2 lines"),
        (json.dumps({"first_seq": 1, "runs": [[1, "stdout", 1.0]]}).encode() + b"\none\ntail", "end with a newline"),
        (
            json.dumps({"first_seq": 1, "runs": [[1, "stdout", 1.0]]}).encode() + b"\nbad \xff\n",
            "not valid UTF-8 (byte 4)",
        ),
        (json.dumps({"first_seq": 1, "runs": [[1, "stdout", 1.0]], "x": 1}).encode() + b"\na\n", "x"),
        (
            json.dumps({"first_seq": 1, "runs": [[100_001, "stdout", 1.0]]}).encode() + b"\n" + b"\n" * 100_001,
            "at most",
        ),
    ],
)
def test_bad_batches_say_why(body, reason):
    with pytest.raises(BadBatch) as err:
        decode(body)
    assert reason in str(err.value)


@pytest.mark.parametrize("max_bytes", [1, 3, 5, 8, 100])
def test_pieces_cut_at_line_ends_and_keep_every_line(max_bytes):
    whole = Batch(41, RUNS, DATA)
    pieces = whole.pieces(max_bytes)
    assert [line for p in pieces for line in p.unpack()] == whole.unpack()
    assert all(p.data.endswith(b"\n") and (len(p.data) <= max_bytes or p.lines == 1) for p in pieces)
    assert [p.first_seq for p in pieces] == [41] + [p.last_seq + 1 for p in pieces[:-1]]


@pytest.mark.parametrize("ts", ["NaN", "Infinity", "-1", "1e300"])
def test_a_time_that_cannot_be_a_date_is_refused(ts):
    with pytest.raises(BadBatch, match="runs.0.2"):
        decode(b'{"first_seq": 1, "runs": [[1, "stdout", %s]]}\nx\n' % ts.encode())
