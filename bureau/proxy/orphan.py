"""Whether this proxy has been left behind: its socket path no longer names the socket it
bound (removed with the run dir, or taken by another socket) *and* the launcher that
started it is gone. Then nobody can reach it and nobody will stop it, so it stops itself,
as SIGTERM stops it, rather than hold credentials for minutes or for ever.

Either alone is normal. A launcher restart leaves its proxies serving, to be adopted (the
launcher is gone, the socket is the proxy's); a rotation puts the new proxy on the path
while the old one drains (the socket is not the old one's, and the live launcher stops
it). Adoption gives a proxy no sign of its new launcher, so an adopted proxy counts its
launcher as gone: it stops once its path is removed or taken, which an adopting launcher
does only when it replaces or removes that proxy, and stops it anyway.

"Gone" is the parent pid changing. The launcher, a child subreaper, becomes the proxy's
parent once the template's middle fork exits, and stays its parent until it dies; the
kernel then hands the proxy to another reaper, whose pid differs (no pid reuse can fake
this). The parent is read once the payload has been read to its end: the launcher writes
it only after the template has reaped its middle fork.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bureau.errors import BureauError

CHECK_SECONDS = 1.0
OURS, REMOVED, REPLACED = "ours", "removed", "replaced"


class Watch:
    """One check: the state of the socket path, and whether the launcher is gone."""

    def __init__(
        self,
        paths: Sequence[Path],
        bound: tuple[int, int],
        parent: int,
        *,
        getppid: Callable[[], int] = os.getppid,
    ) -> None:
        """``paths``: where the socket may be, in the order the launcher moves it (the
        path it was bound at, then the one it is renamed to once ready): read in that
        order, a rename between two reads still finds it. ``bound``: its (st_dev, st_ino).
        """
        self.paths = tuple(paths)
        self.bound = bound
        self.parent = parent
        self._getppid = getppid

    @classmethod
    def of(cls, bound_path: Path, installed_as: Path | None, parent: int) -> Watch:
        """For the socket just bound at ``bound_path`` (before READY: nobody has moved it)."""
        try:
            st = os.lstat(bound_path)
        except OSError as exc:
            raise BureauError(f"--socket {bound_path}: {exc.strerror or exc}") from None
        paths = [bound_path] if installed_as is None else [bound_path, installed_as]
        return cls(paths, (st.st_dev, st.st_ino), parent)

    @property
    def shown(self) -> Path:
        """The path a reader knows the proxy by: where the launcher installs it."""
        return self.paths[-1]

    def socket(self) -> str:
        """OURS, REMOVED (nothing at any path) or REPLACED (something else there)."""
        other = False
        for path in self.paths:
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                return OURS  # cannot tell (EACCES, say): never stop on a doubt
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self.bound:
                return OURS
            other = True
        return REPLACED if other else REMOVED

    def launcher_gone(self) -> bool:
        return self._getppid() != self.parent


async def watch(
    check: Watch, stop: asyncio.Event, log: Any, *, period: float = CHECK_SECONDS
) -> None:
    """Check every ``period``; set ``stop`` (the lifecycle's) once nobody can reach this
    proxy nor stop it. While one half holds, say so at debug, at the 1st, 2nd, 4th, 8th...
    check in a row: evidence the check runs, without a line a second for ever."""
    last: tuple[str, bool] = (OURS, False)
    streak = 0
    while not stop.is_set():
        await asyncio.sleep(period)
        socket = check.socket()
        gone = check.launcher_gone()
        if socket != OURS and gone:
            log.warning(
                "stopping: nobody can reach this proxy",
                reason=f"its socket path {check.shown} was {socket} and the launcher that "
                f"started it (pid {check.parent}) is gone",
            )
            stop.set()
            return
        state = (socket, gone)
        streak = streak + 1 if state == last else 1
        last = state
        if state != (OURS, False) and streak & (streak - 1) == 0:
            log.debug(
                "orphan check",
                socket=socket,
                launcher="gone" if gone else "alive",
                checks=streak,
            )
