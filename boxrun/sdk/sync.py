"""The sync facade: `Client` runs the async implementation (boxrun.sdk.aio) on an event loop of
its own in a daemon thread, so no method is written twice and it works where a loop already runs
(a notebook). Every coroutine method becomes a blocking call, every async iterator a plain
iterator, and a resource or handle it returns (Job, Pipeline, ...) is wrapped the same way."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import httpx

from boxrun.client.base import DEFAULT_TIMEOUT_S
from boxrun.sdk.aio import AsyncClient, _Handle

T = TypeVar("T")


class Runner:
    """An event loop running in a daemon thread; `run` blocks the calling thread on a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="boxrun-sdk", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.closed:
            coro.close()
            raise RuntimeError("this boxrun client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync boxrun client cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller: stop the work in the loop too
            raise

    def iterate(self, agen: AsyncIterator[Any]) -> Iterator[Any]:
        """A blocking iterator over an async one (closed with it when left early)."""
        try:
            while True:
                try:
                    item = self.run(_next(agen))
                except StopAsyncIteration:
                    return
                yield wrap(item, self)
        finally:
            close = getattr(agen, "aclose", None)
            if close is not None and not self.closed:
                self.run(close())

    def close(self) -> None:
        if self.closed:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _next(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()


def wrap(value: Any, runner: Runner) -> Any:
    """The sync face of a value of the async implementation."""
    if isinstance(value, _Handle):
        return Sync(value, runner)
    if isinstance(value, list):
        return [wrap(v, runner) for v in value]
    if inspect.isasyncgenfunction(value):

        @functools.wraps(value)
        def iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
            return runner.iterate(value(*args, **kwargs))

        return iterate
    if inspect.iscoroutinefunction(value):

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            return wrap(runner.run(value(*args, **kwargs)), runner)

        return call
    return value


class Sync:
    """The blocking face of an object of the async implementation: its attributes, wrapped."""

    def __init__(self, target: Any, runner: Runner) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_runner", runner)

    def __getattr__(self, name: str) -> Any:
        return wrap(getattr(self._target, name), self._runner)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self._target).__name__} attributes are read-only")

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._target)))

    def __repr__(self) -> str:
        return repr(self._target)

    @property
    def aio(self) -> Any:
        """The async object behind this one."""
        return self._target


class Client(Sync):
    """The boxrun API from plain (blocking) code: the same resources and methods as AsyncClient,
    without `await`:

        with Client() as client:
            job = client.jobs.submit("echo hi", box="local-1")
            for line in job.follow():
                print(line.text)
            print(job.state, job.exit_code)"""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        runner = Runner()

        async def make() -> AsyncClient:  # the connection pool belongs to the runner's loop
            return AsyncClient(url, token, timeout=timeout, transport=transport)

        try:
            target = runner.run(make())
        except BaseException:
            runner.close()
            raise
        super().__init__(target, runner)
        object.__setattr__(self, "_finalizer", weakref.finalize(self, _shutdown, target, runner))

    def close(self) -> None:
        """Close the connections and stop the loop thread (also done when the client is collected)."""
        self._finalizer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(target: AsyncClient, runner: Runner) -> None:
    if not runner.closed:
        try:
            runner.run(target.aclose())
        finally:
            runner.close()
