"""A principal's sandbox as a kind of supervised child: bubblewrap, started by the launcher
as the principal's own uid, with every namespace new, its workspace at /workspace and its
proxy's socket at /run/bureau/proxy.sock as the only way out (sandbox_policy.py).

The child the launcher supervises is the sandbox's keeper, ``setsid --fork --wait``: bwrap's
parent, which exits with bwrap's status. bwrap's --die-with-parent binds its outer process
to its parent and its inner one (the pid namespace's init) to the outer one; with the
launcher as the parent, a launcher that died took every sandbox with it. The keeper
outlives the launcher, so that the next launcher adopts the sandbox, and whoever kills the
keeper kills everything in the sandbox. It is started blocked (--block-fd): the keeper and
bwrap's two processes are moved into the sandbox's cgroup before anything of the workload
runs. When the keeper has exited, the launcher waits until the sandbox's processes are gone
(``ended``) before it restarts, replaces or stops it, and reaps what it inherits as a
subreaper (bwrap's inner process, the log relay).

The proxy socket reaches the sandbox through a directory of the principal's own that holds
a hard link to it: a rotated proxy's new socket is linked there (link() then rename()),
so the running workload's next connection reaches the new proxy. The workload's output
goes to the journal through a small relay (sandbox_log.py) forked by the proxy template.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import stat
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bureau.files import make_dirs
from bureau.launcher import sandbox_policy as policy
from bureau.launcher.cgroups import Cgroups
from bureau.launcher.children import Child, LauncherError
from bureau.launcher.sandbox_start import OVERHEAD, Started, descendants, exit_status, start
from bureau.launcher.sandbox_uids import SandboxUids
from bureau.launcher.spawner import Spawner, SpawnError

START_TIMEOUT = 20.0
GRACE_SECONDS = 10.0
CLEAR_TIMEOUT = 10.0  # for a SIGKILLed sandbox's processes to be gone
CLEAR_POLL = 0.01
LINK_NAME = "proxy.sock"


def _key(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


def unreachable(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not pass through."""
    for directory in [*reversed(path.parents), path]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            return None  # made by the launcher, 0711
        if not mode & 0o001:
            return directory
    return None


class SandboxKind:
    name = "sandbox"
    grace = GRACE_SECONDS

    def __init__(
        self,
        *,
        sandbox_dir: Path,
        run_dir: Path,
        machine: policy.Machine,
        uids: SandboxUids,
        cgroups: Cgroups,
        spawner: Spawner,
        proxy_socket: Callable[[str], Path],
        credential_names: Callable[[str], Sequence[str]],
        log: Any,
    ) -> None:
        self._workspaces = sandbox_dir
        self._links = run_dir / "sandbox"
        self._logs = run_dir / "launcher" / "logs"  # where there is no journal
        self._exits = run_dir / "launcher" / "exits"  # bwrap's status files
        self._machine = machine
        self._uids = uids
        self._cgroups = cgroups
        self._spawner = spawner
        self._proxy_socket = proxy_socket
        self._credential_names = credential_names
        self._log = log
        self._started: dict[int, Started] = {}  # by bwrap's (outer) pid

    # -- checks --------------------------------------------------------------------------

    def check(
        self, principal: str, content: dict[str, Any], names: Sequence[str] | None = None
    ) -> policy.Checked:
        """``names``: the credentials the principal's bundle holds (default: the running
        proxy's)."""
        if names is None:
            names = self._credential_names(principal)
        try:
            spec = policy.parse(content)
            return policy.check(spec, self._machine, names)
        except policy.SpecRefused as exc:
            raise LauncherError(f"sandbox for {principal}: {exc}") from None

    # -- the socket link -----------------------------------------------------------------

    def link_socket(self, principal: str) -> Path:
        """Put the principal's current proxy socket in its sandbox directory, reachable by
        its uid only: group = the sandbox's gid, mode 0660 (the launcher owns it)."""
        uid = self._uids.get(principal)
        directory = self._links / _key(principal)
        make_dirs(self._links, 0o711)
        make_dirs(directory, 0o710)
        os.chown(directory, -1, uid)
        socket = self._proxy_socket(principal)
        os.chown(socket, -1, uid)
        socket.chmod(0o660)
        temporary = directory / f".{LINK_NAME}.new"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.link(socket, temporary)
        temporary.rename(directory / LINK_NAME)
        # rename() of a link onto a link of the same socket does nothing, and leaves it.
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        return directory

    def relink(self, principal: str) -> None:
        """After the proxy was replaced: the sandbox's link follows it."""
        if (self._links / _key(principal)).is_dir() and self._uids.known(principal):
            self.link_socket(principal)

    def _workspace(self, principal: str, uid: int) -> Path:
        path = self._workspaces / _key(principal)
        make_dirs(self._workspaces, 0o711)  # others pass through, see nothing
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise LauncherError(f"sandbox for {principal}: workspace {path} is not a directory")
        if info.st_uid != uid or info.st_gid != uid or info.st_mode & 0o7777 != 0o700:
            # A workload may have changed its own workspace's mode. The launcher has no
            # CAP_FOWNER: it owns the directory for a moment (CAP_CHOWN) to set it right.
            os.chown(path, os.getuid(), -1, follow_symlinks=False)
            path.chmod(0o700)
            os.chown(path, uid, uid, follow_symlinks=False)
        return path

    # -- Kind ----------------------------------------------------------------------------

    async def launch(self, principal: str, spec: dict[str, Any]) -> int:
        checked = self.check(principal, spec)
        for path in (self._workspaces, self._links):
            closed = unreachable(path)
            if closed is not None:
                # bwrap sets up the sandbox as the sandbox's uid: it must reach both.
                raise LauncherError(
                    f"sandbox for {principal}: {closed} does not let others pass through "
                    f"to {path} (chmod o+x {closed})"
                )
        try:
            uid = self._uids.allocate(principal)
        except OSError as exc:
            raise LauncherError(
                f"sandbox for {principal}: {exc.strerror or type(exc).__name__} ({exc.filename})"
            ) from None
        # What an earlier sandbox of the principal left (one nobody recorded, say) must not
        # run beside the new one, nor count against its limits.
        if not await self._emptied(principal):
            raise LauncherError(f"sandbox for {principal}: an earlier sandbox's processes live on")
        try:
            workspace = self._workspace(principal, uid)
            socket_dir = self.link_socket(principal)
            group = self._cgroups.create(
                _key(principal),
                memory=checked.memory_bytes,
                pids=checked.pids + OVERHEAD,
                cpu_shares=checked.cpu_shares,
            )
        except OSError as exc:
            raise LauncherError(
                f"sandbox for {principal}: {exc.strerror or type(exc).__name__} ({exc.filename})"
            ) from None
        relays: list[int] = []
        try:
            pid, started = await asyncio.to_thread(
                partial(
                    start,
                    principal=principal,
                    checked=checked,
                    uid=uid,
                    workspace=workspace,
                    socket_dir=socket_dir,
                    group=group,
                    relays=relays,
                    relay=self._relay,
                    exit_file=self._exit_file(principal),
                )
            )
        finally:
            for relay in relays:
                self._reap_when_done(relay)
        self._started[pid] = started
        return pid

    def _relay(self, principal: str, log_r: int) -> int | None:
        """The workload's output, line by line, to the journal. The relay holds the only
        read end: it outlives a launcher restart and ends when the sandbox does. Its pid:
        the template orphans what it forks, so the launcher (a subreaper) reaps it."""
        try:
            make_dirs(self._logs, 0o700)
            logfile = str(self._logs / f"{_key(principal)}.log")
            spawned = self._spawner.spawn(["--log-relay", principal, logfile], stdin=log_r)
        except (SpawnError, OSError) as exc:  # its writes then fail; it runs regardless
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

    async def _emptied(self, principal: str) -> bool:
        """SIGKILL whatever the principal's cgroup holds until it is empty; whether it is."""
        group = self._cgroups.existing(_key(principal))
        deadline = time.monotonic() + CLEAR_TIMEOUT
        while group is not None and group.pids():
            if time.monotonic() > deadline:
                return False
            group.kill()
            await asyncio.sleep(CLEAR_POLL)
        return True

    @staticmethod
    async def _exit_of(pidfd: int) -> bool:
        """Wait (bounded) until the process of ``pidfd`` has exited; whether it has."""
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        loop.add_reader(pidfd, exited.set)
        try:
            async with asyncio.timeout(CLEAR_TIMEOUT):
                await exited.wait()
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(pidfd)
        return True

    def _exit_file(self, principal: str) -> Path:
        make_dirs(self._exits, 0o700)
        return self._exits / f"{_key(principal)}.json"

    async def ended(self, child: Child) -> str | None:
        """The keeper has exited: bwrap's outer process with it, and its inner one dies of
        that (--die-with-parent), with every process in the pid namespace. Wait until they
        are gone and reap bwrap's inner process if the launcher inherited it. Returns how
        bwrap said the sandbox ended (the word of a sandbox adopted from an earlier
        launcher, whose keeper this one cannot reap)."""
        started = self._started.pop(child.pid, None)
        try:
            gone = True
            if started is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(started.inner, signal.SIGKILL)
                gone = await self._exit_of(started.inner)
            if not (await self._emptied(child.principal) and gone):
                self._log.error("a sandbox's processes outlived it", principal=child.principal)
        except Exception as exc:  # must not raise: see Children._watch
            self._log.error(
                "could not end what a sandbox left", principal=child.principal, error=repr(exc)
            )
        finally:
            if started is not None:
                with contextlib.suppress(ChildProcessError):
                    # Ours when bwrap's outer process exited before it.
                    os.waitid(os.P_PIDFD, started.inner, os.WEXITED | os.WNOHANG)
                os.close(started.inner)
        return exit_status(self._exits / f"{_key(child.principal)}.json")

    def should_restart(self, spec: dict[str, Any], how: str) -> bool:
        policy_name = str(spec.get("restart_policy", "on-failure"))
        if policy_name == "always":
            return True
        return policy_name == "on-failure" and how != "status 0"

    def terminate(self, child: Child) -> None:
        """SIGTERM to the workload's processes: bwrap's own two pass it on to nobody."""
        workload = descendants(child.pid)[2:]  # below bwrap's outer and inner processes
        for pid in workload:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not workload:  # nothing of the workload is left to drain
            self.kill(child)

    def kill(self, child: Child) -> None:
        """SIGKILL the keeper: bwrap's outer process dies with it, its inner one with that,
        and every process in the pid namespace with the inner one."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        started = self._started.get(child.pid)
        if started is not None:  # the pid namespace's init: every process in it dies
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(started.inner, signal.SIGKILL)
        group = self._cgroups.existing(_key(child.principal))
        if group is not None:
            group.kill()

    def adoptable(self, principal: str) -> None:
        self._uids.get(principal)

    def removed(self, principal: str) -> None:
        """The workspace stays (the principal's data); its socket link and cgroup go."""
        with contextlib.suppress(FileNotFoundError):
            (self._exits / f"{_key(principal)}.json").unlink()
        with contextlib.suppress(FileNotFoundError):
            (self._links / _key(principal) / LINK_NAME).unlink()
        with contextlib.suppress(OSError):
            (self._links / _key(principal)).rmdir()
        group = self._cgroups.existing(_key(principal))
        if group is not None:
            group.kill()
            group.remove()

    def sweep(self, adopted: set[int]) -> None:
        """Sandboxes are found by their records only: one whose record is gone was never
        installed (or its record could not be written), and nobody adopts it. Its keeper
        is in its cgroup, where there are cgroups: killed with everything there."""
        for principal in self._uids.principals():
            group = self._cgroups.existing(_key(principal))
            if group is not None and group.pids() and not adopted & set(group.pids()):
                group.kill()
                self._log.warning("killed a sandbox that nobody adopted", principal=principal)

    def workload(self, child: Child) -> tuple[int, int, float]:
        """(workload pid, memory in bytes, CPU seconds) of a running sandbox."""
        pids = descendants(child.pid)
        workload = pids[2] if len(pids) > 2 else 0  # below bwrap's outer and inner processes
        group = self._cgroups.existing(_key(child.principal))
        memory = group.memory_bytes() if group is not None else None
        cpu = 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        rss = 0
        for pid in [child.pid, *pids]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu += (int(fields[11]) + int(fields[12])) / ticks
                rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return workload, memory if memory is not None else rss, cpu
