"""Supervised children of one kind (a principal's proxy today; its sandbox next): start
one through its Kind, watch it (a pidfd works for our children and adopted processes
alike), restart it with backoff when it dies, record it so that the next launcher adopts
it, and stop it with a grace period. What a child runs from is its ``spec``: public
content (a credentials event), never plaintext, so a restart starts again from it.

A Kind knows its own details (how to launch and check readiness, what to clean up, which
strays to sweep); this module knows none of them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bureau.errors import BureauError, InputError
from bureau.files import atomic_write, make_dirs, read_private_json
from bureau.launcher.processes import process_start_time, reap

if TYPE_CHECKING:  # sandboxd imports this module; it runs no lifecycle of its own
    from bureau.lifecycle import TaskOwner

# Starts a principal's child again from its recorded spec (the registry's ensure).
Recreate = Callable[[str, dict[str, Any]], Awaitable[object]]

DRAIN_TIMEOUT = 15.0
BACKOFF_CAP = 30.0
STABLE_SECONDS = 60.0
POLL_SECONDS = 1.0  # watching a child without a pidfd


class LauncherError(Exception):
    """A request the launcher refuses; the message is one line and holds no secret."""


@dataclass
class Child:
    principal: str
    pid: int
    start_time: int | None
    digest: str  # identity of the spec it runs
    spec: dict[str, Any]
    started_at: float
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # and whatever it left is gone
    reaped: bool = False  # its pid is no longer its own: never signal it
    retiring: bool = False
    restarts: int = 0
    crash_streak: int = 0
    finished: bool = False  # exited, and its restart policy says stay down
    last_exit: str = ""

    @property
    def status(self) -> str:
        if self.finished:
            return "exited"
        return "restarting" if self.exited.is_set() else "running"


class Kind(Protocol):
    name: str  # in logs: "proxy started"
    grace: float  # from terminate() to kill()

    async def launch(self, principal: str, spec: dict[str, Any]) -> int:
        """Check the spec, start a child from it and wait until it is ready; its pid.
        Refusals are LauncherError."""

    def adoptable(self, principal: str) -> None:
        """Raise (any error) if a recorded principal can no longer run as this kind."""

    def removed(self, principal: str) -> None:
        """Clean up after the principal's child was stopped for good."""

    def sweep(self, adopted: set[int]) -> None:
        """After adoption: stop this kind's processes nobody adopted, remove leftovers."""

    def should_restart(self, spec: dict[str, Any], how: str) -> bool:
        """Whether a child that exited (``how``: "status N" or "signal NAME") is started
        again."""

    def terminate(self, child: Child) -> None:
        """Ask the child to stop (SIGTERM, or what stands for it)."""

    def kill(self, child: Child) -> None:
        """Stop it now, with everything it started."""


@runtime_checkable
class LeavesRemains(Protocol):
    """A kind whose child may leave processes behind when it exits (a sandbox's bwrap
    exits when the workload's first process does, not when its last one does)."""

    async def ended(self, child: Child, reaped: bool) -> str | None:
        """After the child exited (and was reaped, if ``reaped``), before anyone learns of
        it (a restart, a replacement, a stop): end and reap what it left. Must not raise.
        May say how the child ended, where reaping could not (an adopted child, or one
        another process started, is not ours to reap)."""


def _forget(record: Path) -> None:
    """An adoption record's unlink: a local file, a moment's work (from async code)."""
    record.unlink()


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, LauncherError) else type(exc).__name__


class Children:
    def __init__(
        self,
        kind: Kind,
        records: Path,
        log: Any,
        tasks: TaskOwner,
        lock: Callable[[str], asyncio.Lock],
    ) -> None:
        """``lock`` gives the principal's lock, held around every start and stop of it."""
        self.kind = kind
        self._records = records
        self._log = log
        self._tasks = tasks
        self._lock = lock
        self.running: dict[str, Child] = {}

    async def start(self, principal: str, spec: dict[str, Any], digest: str) -> Child:
        """A new child, ready and watched, not yet the principal's (see install)."""
        pid = await self.kind.launch(principal, spec)
        child = Child(principal, pid, process_start_time(pid), digest, spec, time.time())
        self._tasks.create_task(self._watch(child))
        return child

    def install(self, child: Child) -> None:
        """The child is the principal's from now on. Its adoption record is written for
        the next launcher; a record that cannot be written (a full or unsafe run dir) is
        logged, not raised: the child runs, and the next launcher, finding no record,
        stops it and the daemon has it started again."""
        self.running[child.principal] = child
        try:
            self._write_record(child)
        except (BureauError, OSError) as exc:
            self._log.error(
                f"could not record the {self.kind.name} for adoption",
                principal=child.principal,
                error=str(exc),
            )

    async def remove(self, principal: str) -> bool:
        """Stop the principal's child for good (the caller holds its lock)."""
        current = self.running.pop(principal, None)
        if current is not None:
            await self.retire(current)
        self.kind.removed(principal)
        with contextlib.suppress(FileNotFoundError):
            self._record(principal).unlink()
        return current is not None

    async def retire(self, child: Child) -> None:
        """SIGTERM: the child stops accepting and drains; SIGKILL if it overstays. Returns
        once it is gone with whatever it left."""
        child.retiring = True
        if child.reaped:
            # Its pid may be someone else's by now; what it left is being ended.
            await child.exited.wait()
            return
        self.kind.terminate(child)
        try:
            async with asyncio.timeout(self.kind.grace):
                await child.exited.wait()
        except TimeoutError:
            if not child.reaped:
                self.kind.kill(child)
            await child.exited.wait()

    # -- records -------------------------------------------------------------------------

    def _record(self, principal: str) -> Path:
        return self._records / (hashlib.sha256(principal.encode()).hexdigest()[:32] + ".json")

    def _write_record(self, child: Child) -> None:
        make_dirs(self._records, 0o700)
        record = {
            "principal": child.principal,
            "pid": child.pid,
            "start_time": child.start_time,
            "digest": child.digest,
            "content": child.spec,
            "started_at": child.started_at,
        }
        atomic_write(self._record(child.principal), json.dumps(record).encode(), 0o600)

    # -- watching ------------------------------------------------------------------------

    async def _watch(self, child: Child) -> None:
        """Wait for the child to exit, reap it if it is ours, let its kind end what it left,
        restart it unless retired."""
        try:
            fd = os.pidfd_open(child.pid)
        except ProcessLookupError:
            how = "status unknown"
        except OSError as exc:  # EMFILE, say: watched by polling instead
            self._log.warning(
                f"watching a {self.kind.name} by polling", principal=child.principal, error=str(exc)
            )
            alive = child.start_time is not None
            # No pidfd, no event to wait for: a bounded poll is the fallback.
            while alive and process_start_time(child.pid) == child.start_time:  # noqa: ASYNC110
                await asyncio.sleep(POLL_SECONDS)
            how = reap(child.pid)
        else:
            died = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, died.set)
            try:
                await died.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
            how = reap(child.pid)  # it has exited: this does not block
        child.reaped = True
        if isinstance(self.kind, LeavesRemains):
            said = await self.kind.ended(child, how != "status unknown")
            if how == "status unknown" and said is not None:
                how = said
        child.exited.set()
        await self._exited(child, how)

    async def _exited(self, child: Child, how: str) -> None:
        if child.retiring:
            return
        name = self.kind.name
        child.last_exit = how
        if not self.kind.should_restart(child.spec, how):
            child.finished = True
            self._log.warning(f"{name} exited; not restarted", principal=child.principal, exit=how)
            return
        self._log.warning(f"{name} exited; restarting", principal=child.principal, exit=how)
        streak = 0 if time.time() - child.started_at > STABLE_SECONDS else child.crash_streak + 1
        delay = min(2.0 ** (streak - 1), BACKOFF_CAP) if streak else 0.0
        while True:
            await asyncio.sleep(delay)
            async with self._lock(child.principal):
                if self.running.get(child.principal) is not child:
                    return  # stopped or replaced meanwhile
                try:
                    new = await self.start(child.principal, child.spec, child.digest)
                except Exception as exc:  # this task must live to retry
                    # Whatever went wrong, this watcher keeps trying: an exception leaving
                    # it would end the launcher's task group, and every principal with it.
                    self._log.error(
                        "restart failed", principal=child.principal, error=_describe(exc)
                    )
                    delay = min(max(delay * 2, 1.0), BACKOFF_CAP)
                    continue
                new.restarts, new.crash_streak = child.restarts + 1, streak
                new.last_exit = how
                self.install(new)
            self._log.info(f"{name} restarted", principal=child.principal, pid=new.pid)
            return

    # -- adoption ------------------------------------------------------------------------

    async def adopt(self, recreate: Recreate) -> None:
        """Take over the children an earlier launcher left running; ``recreate`` those
        that died with it. Then the kind sweeps what nobody adopted."""
        if self._records.is_dir():
            for path in sorted(self._records.glob("*.json")):
                await self._adopt_record(path, recreate)
        self.kind.sweep({child.pid for child in self.running.values()})

    async def _adopt_record(self, path: Path, recreate: Recreate) -> None:
        try:
            # Strict: a record decides which pid the launcher adopts and signals.
            record: Any = read_private_json(path, strict=True)
            principal, spec = str(record["principal"]), dict(record["content"])
            pid, start_time = int(record["pid"]), record["start_time"]
            alive = start_time is not None and process_start_time(pid) == start_time
            self.kind.adoptable(principal)
            child = Child(
                principal,
                pid,
                start_time,
                str(record["digest"]),
                spec,
                float(record.get("started_at", time.time())),
            )
        except (InputError, OSError, ValueError, KeyError, TypeError):
            # Its process, if it runs, is swept as one that nobody adopted.
            self._log.warning(f"ignoring unusable {self.kind.name} record", path=str(path))
            _forget(path)
            return
        if alive:
            self.running[principal] = child
            self._tasks.create_task(self._watch(child))
            self._log.info(f"adopted running {self.kind.name}", principal=principal, pid=pid)
            return
        try:
            await recreate(principal, spec)
        except Exception as exc:  # one record must not stop the others
            self._log.error(
                f"could not recreate {self.kind.name}", principal=principal, error=_describe(exc)
            )
            _forget(path)
