"""A principal's sandbox as a kind of supervised child: bubblewrap, started as the
principal's own uid, with every namespace new, its workspace at /workspace and its proxy's
socket at /run/bureau/proxy.sock as the only way out (sandbox_policy.py).

This decides when; what takes privileges (uids, chown, signals to other uids, cgroups) is
the host's (sandbox_host.py): bureau-sandboxd's, asked over its socket
(sandbox_broker.py), or the launcher's own when it runs without --sandbox-broker.

The child supervised is the sandbox's keeper (sandbox_host.py). When it has exited, the
launcher waits until the sandbox's processes are gone (``ended``) before it restarts,
replaces or stops it. The workload's output goes to the journal through a small relay
(sandbox_log.py) forked by the proxy template; the relay is the launcher's child (a
subreaper's), reaped when it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from bureau.errors import InputError
from bureau.files import make_dirs
from bureau.launcher.children import Child, LauncherError
from bureau.launcher.sandbox_paths import key_of
from bureau.launcher.spawner import Spawner, SpawnError
from bureau.wire.sandbox_spec import SandboxSpec

GRACE_SECONDS = 10.0
FIGURES_WAIT = 2.0  # for the host's figures of every running sandbox, when listed


class Host(Protocol):
    """SandboxHost (in process) or BrokerClient (bureau-sandboxd)."""

    @property
    def mode(self) -> str: ...
    def known(self, principal: str) -> bool: ...
    def check(self, principal: str, spec: SandboxSpec, credentials: Sequence[str]) -> object: ...
    def start(
        self, principal: str, spec: SandboxSpec, credentials: Sequence[str]
    ) -> tuple[int, int]: ...
    def relink(self, principal: str) -> None: ...
    def finish(self, principal: str, keeper: int, *, reaped: bool) -> str | None: ...
    def terminate(self, principal: str, keeper: int) -> None: ...
    def kill(self, principal: str, keeper: int) -> None: ...
    def removed(self, principal: str) -> None: ...
    def sweep(self, adopted: set[int]) -> list[str]: ...
    def workload(self, principal: str, keeper: int) -> tuple[int, int, float]: ...


class SandboxKind:
    name = "sandbox"
    grace = GRACE_SECONDS

    def __init__(
        self,
        *,
        host: Host,
        run_dir: Path,
        spawner: Spawner,
        credential_names: Callable[[str], Sequence[str]],
        log: Any,
    ) -> None:
        self.host = host
        self._logs = run_dir / "launcher" / "logs"  # where there is no journal
        self._spawner = spawner
        self._credential_names = credential_names
        self._log = log
        self._figures: dict[int, tuple[int, int, float]] = {}  # by keeper pid

    async def check(
        self, principal: str, spec: SandboxSpec, names: Sequence[str] | None = None
    ) -> None:
        """``names``: the credentials the principal's bundle holds (default: the running
        proxy's)."""
        if names is None:
            names = self._credential_names(principal)
        await asyncio.to_thread(self.host.check, principal, spec, names)

    async def relink(self, principal: str) -> None:
        """After the proxy was replaced: the sandbox's link follows it."""
        await asyncio.to_thread(self.host.relink, principal)

    # -- Kind ----------------------------------------------------------------------------

    async def launch(self, principal: str, spec: dict[str, Any]) -> int:
        """``spec``: a SandboxSpec's JSON, as its record keeps it."""
        try:
            checked = SandboxSpec.from_json(spec)
        except InputError as exc:
            raise LauncherError(f"sandbox for {principal}: {exc}") from None
        names = self._credential_names(principal)
        pid, log_r = await asyncio.to_thread(self.host.start, principal, checked, names)
        relay = await asyncio.to_thread(partial(self._relay, principal, log_r))
        if relay is not None:
            self._reap_when_done(relay)
        return pid

    def _relay(self, principal: str, log_r: int) -> int | None:
        """The workload's output, line by line, to the journal. The relay holds the only
        read end: it outlives a launcher restart and ends when the sandbox does. Its pid:
        the template orphans what it forks, so the launcher (a subreaper) reaps it."""
        try:
            make_dirs(self._logs, 0o700)
            logfile = str(self._logs / f"{key_of(principal)}.log")
            spawned = self._spawner.spawn(["--log-relay", principal, logfile], stdin=log_r)
        except (SpawnError, OSError) as exc:  # its writes then fail; it runs regardless
            with contextlib.suppress(OSError):
                os.close(log_r)  # spawn() closes it, unless it failed before
            self._log.warning("no log relay for a sandbox", principal=principal, error=str(exc))
            return None
        os.close(spawned.stdout)
        return spawned.pid

    def _reap_when_done(self, pid: int) -> None:
        """Reap a relay when it exits (it is the launcher's child, see _relay)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:  # EMFILE, say: it stays a zombie until the launcher exits
            self._log.warning("cannot watch a sandbox's log relay", pid=pid, error=str(exc))
            return
        loop = asyncio.get_running_loop()

        def done() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # it has exited: this does not block

        loop.add_reader(fd, done)

    async def ended(self, child: Child, reaped: bool) -> str | None:
        """Wait until what the sandbox ran is gone (the host's finish); how it ended, where
        the launcher could not reap its keeper (a broker's child, or an adopted one)."""
        try:
            return await asyncio.to_thread(
                partial(self.host.finish, child.principal, child.pid, reaped=reaped)
            )
        except Exception as exc:  # must not raise: see Children._watch
            self._log.error(
                "could not end what a sandbox left", principal=child.principal, error=str(exc)
            )
            return None

    def should_restart(self, spec: dict[str, Any], how: str) -> bool:
        policy_name = str(spec.get("restart_policy", "on-failure"))
        if policy_name == "always":
            return True
        return policy_name == "on-failure" and how != "status 0"

    def terminate(self, child: Child) -> None:
        self._quietly("terminate", self.host.terminate, child)

    def kill(self, child: Child) -> None:
        self._quietly("kill", self.host.kill, child)

    def _quietly(self, what: str, call: Callable[[str, int], None], child: Child) -> None:
        try:
            call(child.principal, child.pid)
        except LauncherError as exc:
            self._log.error(
                f"could not {what} a sandbox", principal=child.principal, error=str(exc)
            )

    def adoptable(self, principal: str) -> None:
        try:
            known = self.host.known(principal)
        except LauncherError as exc:
            # The launcher's own record (0600, its run dir) stands: a host it cannot ask
            # now must not cost a running workload its supervision.
            self._log.warning("adopting a sandbox unchecked", principal=principal, error=str(exc))
            return
        if not known:
            raise KeyError(f"sandbox for {principal}: no uid was given to it")

    def removed(self, principal: str) -> None:
        self.host.removed(principal)

    def sweep(self, adopted: set[int]) -> None:
        """Sandboxes are found by their records only: one whose record is gone was never
        installed (or its record could not be written), and nobody adopts it. The host
        kills each such sandbox's processes, found by its cgroup where there are cgroups."""
        try:
            killed = self.host.sweep(adopted)
        except LauncherError as exc:
            self._log.error("could not sweep sandboxes nobody adopted", error=str(exc))
            return
        for principal in killed:
            self._log.warning("killed a sandbox that nobody adopted", principal=principal)

    def workload(self, child: Child) -> tuple[int, int, float]:
        """(workload pid, memory in bytes, CPU seconds) of a running sandbox, as last
        measured (measure)."""
        return self._figures.get(child.pid, (0, 0, 0.0))

    async def measure(self, children: list[Child]) -> None:
        """Each of ``children``'s figures, from the host on worker threads: never the event
        loop's wait. Those not measured within FIGURES_WAIT keep their last figures."""

        async def one(child: Child) -> None:
            try:
                found = await asyncio.to_thread(self.host.workload, child.principal, child.pid)
            except LauncherError as exc:
                self._log.debug("no figures", principal=child.principal, error=str(exc))
                found = (0, 0, 0.0)
            self._figures[child.pid] = found

        live = {child.pid for child in children}
        self._figures = {pid: f for pid, f in self._figures.items() if pid in live}
        if children:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FIGURES_WAIT):
                    await asyncio.gather(*(one(child) for child in children))
