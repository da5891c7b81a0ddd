from boxrun.activities.box.lines import TRUNCATION_NOTICE, FrameDecoder, LineFramer


def collect(max_line=1 << 20):
    out: list[str] = []
    return out, LineFramer(out.extend, max_line=max_line)


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


def test_long_line_is_cut_with_a_notice():
    out, f = collect(max_line=10)
    f.feed(b"0123456789ABCDEF")
    f.feed(b"GH\nnext\n")
    assert out == ["0123456789" + TRUNCATION_NOTICE.format(dropped=8), "next"]


def test_frames_keep_order_across_streams():
    lines: list[tuple[str, str]] = []
    dec = FrameDecoder({
        b"o": LineFramer(lambda ts: lines.extend(("stdout", t) for t in ts)),
        b"e": LineFramer(lambda ts: lines.extend(("stderr", t) for t in ts)),
    })
    frames = b""
    for code, text in [(b"o", b"a\n"), (b"e", b"b\n"), (b"o", b"c"), (b"o", b"d\n")]:
        frames += code + len(text).to_bytes(2, "big") + text
    for i in range(0, len(frames), 3):  # arbitrary chunking of the pipe
        dec.feed(frames[i:i + 3])
    assert lines == [("stdout", "a"), ("stderr", "b"), ("stdout", "cd")]
