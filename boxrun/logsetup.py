"""Log output of every boxrun process: JSON lines for machines, text for people.

BOXRUN_LOG_FORMAT=json writes one JSON object a line (time, level, logger, message, and job_id,
box, org, request_id where known: boxrun.logcontext); text writes the classic line with the same
fields appended; auto (the default) is text on a terminal and JSON otherwise. Either way the
handler redacts credentials (boxrun.process_lifecycle.RedactSecrets).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from boxrun import logcontext
from boxrun.process_lifecycle import RedactSecrets, redact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ContextFilter(logging.Filter):
    """Puts the context's fields on the record (a field given with `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in logcontext.current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """The classic line, then ` [job_id=... box=... org=... request_id=...]` where known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [f"{name}={value}" for name in logcontext.FIELDS if (value := getattr(record, name, None))]
        if not known:
            return line
        head, sep, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{' '.join(known)}]{sep}{rest}"


class JsonLines(JsonFormatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, the context fields,
    anything passed with `extra=`, and exc_info (redacted) for an exception."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )

    def formatException(self, ei: Any) -> str:  # logging's name
        text = super().formatException(ei)
        return redact(text if isinstance(text, str) else "\n".join(text))


def choose_format(fmt: str, stream: TextIO) -> str:
    """ "json" or "text" for a BOXRUN_LOG_FORMAT value on this stream."""
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        return "text" if isatty is not None and isatty() else "json"
    return fmt


def make_handler(fmt: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the context filter, redaction and the format."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactSecrets())
    handler.setFormatter(JsonLines() if choose_format(fmt, stream) == "json" else TextFormatter())
    return handler


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route the root logger (and so uvicorn's and temporalio's) through one handler of `fmt`."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_boxrun", False)]:
        root.removeHandler(old)
    handler = make_handler(fmt)
    handler._boxrun = True  # type: ignore[attr-defined]  # ours, replaced by a second call
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("temporalio").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
