"""The daemon's heartbeat: ``m.bureau.machine_status`` in the machine room, published once
the first reconcile is done, whenever ``now`` is set (principals changed), and every
``interval`` seconds otherwise. A failed publish backs off (bureau.matrix.retry) and is
tried again; the daemon's other work never waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from bureau.daemon.heartbeat import CpuSampler, status_content
from bureau.daemon.launcher_client import LauncherClient, LauncherUnavailable
from bureau.daemon.principals import Principals
from bureau.errors import MatrixError
from bureau.matrix.retry import backoff_seconds
from bureau.matrix.sync import MachineMatrix
from bureau.wire import rooms


class StatusPublisher:
    def __init__(
        self,
        *,
        matrix: MachineMatrix,
        launcher: LauncherClient,
        machine_user: str,
        state_key: str,
        principals: Principals,
        problems: Callable[[], dict[str, str]],
        interval: float,
        rng: Callable[[], float],
        log: Any,
    ) -> None:
        """``problems``: principals the daemon cannot ask the launcher for, and why."""
        self._matrix = matrix
        self._launcher = launcher
        self._machine_user = machine_user
        self._state_key = state_key
        self._principals = principals
        self._problems = problems
        self._interval = interval
        self._rng = rng
        self._log = log
        self._sampler = CpuSampler()
        self._last = time.monotonic()
        self.room = ""  # the machine room, once joined
        self.now = asyncio.Event()  # set: publish at once

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        attempt = 0
        while True:
            self.now.clear()
            try:
                await self._publish()
            except (MatrixError, LauncherUnavailable) as exc:
                delay = backoff_seconds(attempt, self._rng)
                attempt += 1
                self._log.warning("heartbeat failed; retrying", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self.now.wait()

    async def _publish(self) -> None:
        now = time.monotonic()
        principals = await self._launcher.list()
        failures = self._problems()
        failures |= {p: f.reason for p, f in self._principals.failures.items()}
        content = status_content(
            self._machine_user,
            principals,
            self._sampler,
            now - self._last,
            failures,
            last_activity_at=self._principals.last_activity_at,
        )
        self._last = now
        await self._matrix.put_state(self.room, rooms.MACHINE_STATUS, self._state_key, content)
        self._log.debug("heartbeat published", running=content["sandboxes"]["running"])
