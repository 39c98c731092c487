"""The daemon's answer to a soft logout (M_UNKNOWN_TOKEN with soft_logout: true): the
launcher logs the machine in again with the same device (only it holds the key the
password derives from), and the daemon takes the renewed session from session.json; the
sync goes on from its token. Soft logouts in a row with nothing working between them get
logins at the backoff's pace, not a storm."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bureau.daemon.launcher_client import LauncherClient, LauncherRefused, LauncherUnavailable
from bureau.errors import InputError, MatrixError
from bureau.machine_state import load_session
from bureau.matrix.retry import backoff_seconds
from bureau.matrix.sync import MachineMatrix


class SoftLogouts:
    def __init__(
        self,
        *,
        launcher: LauncherClient,
        matrix: MachineMatrix,
        machine_user: str,
        state_dir: Path,
        log: Any,
        rng: Callable[[], float],
    ) -> None:
        self._launcher = launcher
        self._matrix = matrix
        self._machine_user = machine_user
        self._state_dir = state_dir
        self._log = log
        self._rng = rng
        self._lock = asyncio.Lock()  # the sync and the heartbeat may both get here
        self._in_a_row = 0  # with no successful sync between them

    def reset(self) -> None:
        """A sync worked."""
        self._in_a_row = 0

    async def mend(self, exc: MatrixError) -> bool:
        """After M_UNKNOWN_TOKEN: True once the session works again; False when it is gone
        for good (not a soft logout, the launcher refused, or another machine's session)."""
        if not exc.soft_logout:
            return False
        async with self._lock:
            if self._in_a_row:
                delay = backoff_seconds(self._in_a_row - 1, self._rng)
                self._log.warning("soft logout again; waiting before logging in", retry_in=delay)
                await asyncio.sleep(delay)
            self._in_a_row += 1
            self._log.warning("soft logout; asking the launcher to log in again")
            renewed = await self._ask_launcher()
            if renewed is None:
                return False
            try:
                session = load_session(self._state_dir)
            except InputError as unreadable:
                self._log.error("cannot read the renewed session", problem=str(unreadable))
                return False
            if session is None or session.user_id != self._machine_user:
                return False
            # Also when nothing was renewed: nio forgot the token on the soft logout.
            self._matrix.restore(session)
            if renewed:
                self._log.info("logged in again; resuming", device_id=session.device_id)
            else:
                self._log.warning("the launcher found the session working; resuming")
            return True

    async def _ask_launcher(self) -> bool | None:
        """Whether the launcher renewed the session; None when it refused."""
        attempt = 0
        while True:
            try:
                return await self._launcher.relogin()
            except LauncherRefused as refused:
                self._log.error("the launcher could not log in again", error=str(refused))
                return None
            except LauncherUnavailable as unavailable:
                delay = backoff_seconds(attempt, self._rng)
                attempt += 1
                self._log.warning(
                    "launcher unavailable; will retry", error=str(unavailable), retry_in=delay
                )
                await asyncio.sleep(delay)
