"""One lifecycle for bureau's long-running processes: SIGTERM and SIGINT only set the stop
event; one TaskGroup owns every task; ``start`` binds and says READY; the stop event is
awaited; ``stopping`` (STOPPING=1 first, then closing what serves) runs within a grace
period; then every task still running is cancelled, and the group ends with them. No
exception stands in for "stop"."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class TaskOwner(Protocol):
    """What code that starts tasks is given: the lifecycle's group, tracked."""

    def create_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]: ...


class Owned:
    """The lifecycle's TaskGroup, with every task it was given remembered until done, so
    that a stop can cancel them all."""

    def __init__(self, group: asyncio.TaskGroup) -> None:
        self._group = group
        self._tasks: set[asyncio.Task[Any]] = set()

    def create_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = self._group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def serve(
    start: Callable[[Owned], Awaitable[None]],
    stopping: Callable[[], Awaitable[None]],
    *,
    grace: float,
    stop: asyncio.Event | None = None,
    on_grace_exceeded: Callable[[], None] = lambda: None,
) -> None:
    """Run until SIGTERM or SIGINT (or ``stop``, which the process may set itself)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            owned = Owned(group)
            await start(owned)
            await stop.wait()
            try:
                async with asyncio.timeout(grace):
                    await stopping()
            except TimeoutError:
                on_grace_exceeded()
            owned.cancel_all()
    except BaseExceptionGroup as failed:
        # One failure (a refusal at start, say) is itself: its one line, not a group's.
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
