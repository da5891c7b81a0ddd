"""Process entry plumbing: logging, SIGTERM/SIGINT as a stop event, and a hard exit at the end.

temporalio's native runtime can abort in interpreter teardown (sdk-python #300, exit 134), so
every entry point shuts down its own resources, flushes, and then leaves with os._exit(code).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("temporalio").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))


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
