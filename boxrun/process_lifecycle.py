"""Process entry plumbing: logging, SIGTERM/SIGINT as a stop event, and a hard exit at the end.

temporalio's native runtime can abort in interpreter teardown (sdk-python #300, exit 134), so
every entry point shuts down its own resources, flushes, and then leaves with os._exit(code).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable

REDACTED = "[redacted]"
# Credentials that can reach a log line: `?token=` in a WebSocket URL (browsers cannot set headers),
# an Authorization header's value, and a node token (bxn_...) or user API token (brt_...) anywhere.
_SECRETS = (
    re.compile(r"(?i)(\b[\w-]*token=)[^\s&#\"',;]+"),
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)[\w.~+/=-]+"),
    re.compile(r"()\b(?:bxn|brt)_[\w-]{8,}"),
)


def redact(text: str) -> str:
    """`text` with every credential it holds replaced by [redacted]."""
    for pattern in _SECRETS:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    return text


class RedactSecrets(logging.Filter):
    """A handler filter: the record's rendered message (and traceback text) without credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed call: the handler reports it as logging does, not the caller
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Log to stderr through one handler that redacts credentials, as JSON lines or text
    (BOXRUN_LOG_FORMAT, boxrun.logsetup). uvicorn's loggers reach it when uvicorn is run with
    log_config=None (see `boxrun api`)."""
    from boxrun.logsetup import setup_logging as setup  # logsetup builds on this module's filter

    setup(level, fmt)


def hard_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int | None]]) -> None:
    """Run `main(stop)` where `stop` is set on SIGTERM/SIGINT; exit with its return code."""

    async def _runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return int(await main(stop) or 0)

    code = 1
    try:
        code = asyncio.run(_runner())
    except Exception:
        logging.getLogger("boxrun").exception("fatal error")
    hard_exit(code)
