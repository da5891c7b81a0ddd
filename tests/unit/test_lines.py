from boxrun.agent.lines import TRUNCATION_NOTICE, FrameDecoder, LineFramer


def collect(max_line=1 << 20):
    out: list[str] = []

    def emit(block: bytes, count: int) -> None:
        assert block.endswith(b"\n") and block.count(b"\n") == count
        out.extend(block.decode("utf-8").split("\n")[:-1])

    return out, LineFramer(emit, max_line=max_line)


def test_lines_split_across_chunks():
    out, f = collect()
    f.feed(b"hel")
    f.feed(b"lo\nwor")
    f.feed(b"ld\n\nlast")
    assert out == ["hello", "world", ""]
    f.close()
    assert out == ["hello", "world", "", "last"]


def test_crlf_and_invalid_utf8():
    out, f = collect()
    f.feed(b"dos line\r\nbad \xff byte\nprogress 10%\rprogress 20%\n")
    assert out == ["dos line", "bad \ufffd byte", "progress 10%\rprogress 20%"]


def test_crlf_and_invalid_utf8_split_across_reads():
    out, f = collect()
    f.feed(b"first\r")
    f.feed(b"\nhalf \xe2\x82")
    f.feed(b"\xac euro, then \xe2\x82\nnext\n")
    assert out == ["first", "half \u20ac euro, then \ufffd", "next"]


def test_long_line_is_cut_with_a_notice():
    out, f = collect(max_line=10)
    f.feed(b"0123456789ABCDEF")
    f.feed(b"GH\nnext\n")
    assert out == ["0123456789" + TRUNCATION_NOTICE.format(dropped=8), "next"]


def test_long_line_inside_one_read_is_cut_with_a_notice():
    out, f = collect(max_line=10)
    f.feed(b"short\n" + b"x" * 25 + b"\nafter\n")
    assert out == ["short", "x" * 10 + TRUNCATION_NOTICE.format(dropped=15), "after"]


def test_frames_keep_order_across_streams():
    lines: list[tuple[str, str]] = []

    def sink(stream):
        return LineFramer(lambda block, n: lines.extend((stream, t) for t in block.decode().split("\n")[:-1]))

    dec = FrameDecoder({b"o": sink("stdout"), b"e": sink("stderr")})
    frames = b""
    for code, text in [(b"o", b"a\n"), (b"e", b"b\n"), (b"o", b"c"), (b"o", b"d\n"), (b"o", b"e\nf\n")]:
        frames += code + len(text).to_bytes(2, "big") + text
    for i in range(0, len(frames), 3):  # arbitrary chunking of the pipe
        dec.feed(frames[i : i + 3])
    dec.feed(frames[:0])
    assert lines == [("stdout", "a"), ("stderr", "b"), ("stdout", "cd"), ("stdout", "e"), ("stdout", "f")]
    lines.clear()
    dec.feed(frames)  # the whole pipe in one read: consecutive frames of a stream go as one piece
    assert lines == [("stdout", "a"), ("stderr", "b"), ("stdout", "cd"), ("stdout", "e"), ("stdout", "f")]
