"""Log lines: JSON with the context's job_id/box/org/request_id, text for people, credentials
redacted either way; `auto` picks by whether the stream is a terminal."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

from boxrun import logcontext
from boxrun.logsetup import choose_format, make_handler


def logger_to(stream: io.StringIO, fmt: str) -> logging.Logger:
    log = logging.getLogger(f"test.logsetup.{fmt}.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(make_handler(fmt, stream))
    return log


def test_json_lines_carry_the_context_fields_where_known() -> None:
    out = io.StringIO()
    log = logger_to(out, "json")
    log.info("outside any context")
    with logcontext.bound(request_id="req-1", job_id="0b7c"):
        logcontext.note(box="bench-1", org="acme")
        log.info("job %s claimed", "0b7c")
        with logcontext.bound(box="bench-2"):
            log.warning("inner")
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "outside any context" and first["level"] == "INFO"
    assert not {"request_id", "job_id", "box", "org"} & set(first)
    assert {k: second[k] for k in ("request_id", "job_id", "box", "org")} == {
        "request_id": "req-1",
        "job_id": "0b7c",
        "box": "bench-1",
        "org": "acme",
    }
    assert second["message"] == "job 0b7c claimed" and second["logger"].startswith("test.logsetup")
    assert second["time"].endswith("+00:00")
    assert third["box"] == "bench-2" and third["job_id"] == "0b7c"


def test_json_lines_redact_credentials_in_messages_and_tracebacks() -> None:
    out = io.StringIO()
    log = logger_to(out, "json")
    try:
        raise RuntimeError("rejected Bearer brt_abcdefghijklmnop")
    except RuntimeError:
        log.exception("GET /api/jobs/x/logs/ws?token=brt_abcdefghijklmnop failed")
    text = out.getvalue()
    assert "brt_abcdefghijklmnop" not in text
    line = json.loads(text)
    assert "[redacted]" in line["message"] and "[redacted]" in line["exc_info"]


def test_text_lines_append_the_context() -> None:
    out = io.StringIO()
    log = logger_to(out, "text")
    with logcontext.bound(request_id="r9", job_id="j1"):
        log.info("hello")
    line = out.getvalue().strip()
    assert line.endswith("INFO " + log.name + ": hello [job_id=j1 request_id=r9]"), line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert choose_format("auto", _Tty()) == "text"
    assert choose_format("auto", io.StringIO()) == "json"
    assert choose_format("json", _Tty()) == "json" and choose_format("text", io.StringIO()) == "text"


def test_a_request_id_is_kept_if_tame_else_made() -> None:
    assert logcontext.request_id_from("abc-1.2:3_x") == "abc-1.2:3_x"
    for wild in (None, "", "a b", "x" * 129, "é", "a\nb"):
        made = logcontext.request_id_from(wild)
        assert made != wild and len(made) == 32


def test_a_process_logging_to_a_pipe_writes_json_lines() -> None:
    """BOXRUN_LOG_FORMAT unset (auto) and stderr a pipe, as under a supervisor: JSON."""
    code = (
        "import logging\n"
        "from boxrun import logcontext\n"
        "from boxrun.process_lifecycle import setup_logging\n"
        "setup_logging('INFO')\n"
        "with logcontext.bound(job_id='j-7', request_id='r-7'):\n"
        "    logging.getLogger('boxrun.x').info('ran')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert (line["message"], line["job_id"], line["request_id"], line["logger"]) == ("ran", "j-7", "r-7", "boxrun.x")
