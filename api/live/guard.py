"""The stream guard: open streams (SSE and WebSocket log followers, pipeline events) register the
credential they were opened with (the API token id, and the dashboard session when a cookie
opened them), and one task per API process re-checks every registered credential in ONE query
every `auth_recheck_s`. A token revoked or expired since, a user disabled, or a session signed
out or expired has each of its streams closed through the callback it registered, with the
reason ("token revoked", "token expired", "user X is disabled", "signed out", "session expired").

Requests check their token on every call (api/auth.py); the guard covers what outlives a request.
A revocation made through this process (DELETE /api/tokens/{id}, PATCH /api/users/{name}) kicks
the guard to check at once; other API processes notice within `auth_recheck_s`. If Postgres cannot
answer, the check is logged and tried again at the next tick (streams stay open meanwhile: they
read from the same Postgres, so a revocation written there is seen once it answers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import asyncpg

from boxrun.db import Q
from boxrun.services.identity import User

log = logging.getLogger(__name__)


# What a stream was opened with: (token id, dashboard session id or None).
Credential = tuple[str, str | None]


class Watch:
    """One open stream's registration under its credential. `revoked(reason)` is called at most once,
    from the guard's task; the stream unregisters with close() (also as a context manager)."""

    def __init__(self, guard: StreamGuard, credential: Credential, revoked: Callable[[str], None]) -> None:
        self.guard = guard
        self.credential = credential
        self.reason: str | None = None  # set when the guard closed the stream
        self._revoked = revoked

    def fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._revoked(reason)

    def close(self) -> None:
        self.guard._forget(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamGuard:
    def __init__(self, pool: asyncpg.Pool, interval_s: float) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self._watches: dict[Credential, set[Watch]] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def watch(self, credential: Credential, revoked: Callable[[str], None]) -> Watch:
        """Register a stream opened with `credential`; `revoked(reason)` must end it."""
        watch = Watch(self, credential, revoked)
        self._watches.setdefault(credential, set()).add(watch)
        return watch

    def _forget(self, watch: Watch) -> None:
        held = self._watches.get(watch.credential)
        if held is not None:
            held.discard(watch)
            if not held:
                del self._watches[watch.credential]

    @property
    def open_streams(self) -> int:
        return sum(len(w) for w in self._watches.values())

    def kick(self) -> None:
        """Check now rather than at the next tick (after a revocation or sign-out in this process)."""
        self._kick.set()

    async def check(self) -> int:
        """One round: close the streams of every credential no longer valid. Returns how many."""
        if not self._watches:
            return 0
        held = list(self._watches)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                Q.invalid_stream_credentials, [token for token, _ in held], [session for _, session in held]
            )
        closed = 0
        for row in rows:
            for watch in list(self._watches.pop((row["token_id"], row["session_id"]), ())):
                try:
                    watch.fire(row["reason"])
                except Exception:  # one stream's failure must not keep the others open
                    log.exception("stream guard: closing a stream of token %s failed", row["token_id"])
                closed += 1
        return closed

    async def _run(self) -> None:
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._kick.wait()
            self._kick.clear()
            try:
                closed = await self.check()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("stream guard: could not check the open streams' credentials (%s); trying again", exc)
                continue
            if closed:
                log.info("stream guard: closed %d stream(s) whose credential is no longer valid", closed)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-guard")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def watch_task(guard: StreamGuard | None, user: User | None, task: asyncio.Task[Any]) -> Watch | None:
    """Register a stream's task with the guard under the credential `user` came with: a
    revocation or sign-out cancels the task (which then ends the stream saying why). None for a
    stream without a token id (built in tests)."""
    if guard is None or user is None or user.token_id is None:
        return None

    def revoked(reason: str) -> None:
        task.cancel(f"stream closed: {reason}")

    return guard.watch((user.token_id, user.session_id), revoked)
