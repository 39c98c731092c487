"""What starting and stopping sandboxes takes privileges for, in one place: each principal's
uid (sandbox_uids.py), its workspace and socket link (owned by, or grouped for, its uid:
CAP_CHOWN), its cgroup, the keeper started as its uid (CAP_SETUID, CAP_SETGID), and
signals to its processes (CAP_KILL). The launcher's sandbox kind (sandbox_kind.py) decides
when; this decides nothing and checks everything it is asked: the spec against the
machine's policy, each uid against its range, each pid against the principal's uid.

It runs in bureau-sandboxd (bureau/sandboxd/), the unit that holds those capabilities, so
that the launcher, which holds the machine key, holds none; or inside a launcher run
without --sandbox-broker (as root, in tests and on hosts without the units). Every method
blocks: the launcher calls them from a worker thread.

The keeper, ``setsid --fork --wait``, is bwrap's parent and exits with bwrap's status:
bwrap's --die-with-parent binds its processes to their parent, and the keeper outlives a
restart of whoever started it. It is started blocked (--block-fd): the keeper and bwrap's
two processes are moved into the sandbox's cgroup before anything of the workload runs.

The proxy socket reaches the sandbox through a directory of the principal's own that holds
a hard link to it: a rotated proxy's new socket is linked there (link() then rename()),
so the running workload's next connection reaches the new proxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import signal
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bureau import names
from bureau.files import make_dirs
from bureau.launcher import sandbox_policy as policy
from bureau.launcher.cgroups import Cgroups
from bureau.launcher.children import LauncherError
from bureau.launcher.processes import reap_exited
from bureau.launcher.sandbox_start import OVERHEAD, Started, descendants, exit_status, start
from bureau.launcher.sandbox_uids import SandboxUids

CLEAR_TIMEOUT = 10.0  # for a SIGKILLed sandbox's processes to be gone
CLEAR_POLL = 0.01
LINK_NAME = "proxy.sock"


def key_of(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


def unreachable(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that others may not pass through."""
    for directory in [*reversed(path.parents), path]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            return None  # made here, 0711
        if not mode & 0o001:
            return directory
    return None


def _failed(principal: str, exc: OSError) -> LauncherError:
    where = f" ({exc.filename})" if exc.filename else ""
    return LauncherError(f"sandbox for {principal}: {exc.strerror or type(exc).__name__}{where}")


def real_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class SandboxHost:
    def __init__(
        self,
        *,
        sandbox_dir: Path,
        run_dir: Path,
        machine: policy.Machine,
        uids: SandboxUids,
        cgroups: Cgroups,
    ) -> None:
        self._workspaces = sandbox_dir
        self._run_dir = run_dir
        self._links = run_dir / "sandbox"
        self._exits = run_dir / "launcher" / "exits"  # bwrap's status files
        self._machine = machine
        self._uids = uids
        self._cgroups = cgroups
        self._started: dict[int, Started] = {}  # by keeper pid

    @property
    def mode(self) -> str:
        """How sandbox limits are enforced here: v2, v1, or none (rlimits only)."""
        return self._cgroups.mode

    def known(self, principal: str) -> bool:
        return self._uids.known(principal)

    # -- checks --------------------------------------------------------------------------

    def check(
        self, principal: str, content: dict[str, Any], credentials: Sequence[str]
    ) -> policy.Checked:
        """``credentials``: the names the principal's bundle holds."""
        try:
            return policy.check(policy.parse(content), self._machine, credentials)
        except policy.SpecRefused as exc:
            raise LauncherError(f"sandbox for {principal}: {exc}") from None

    def _keeper(self, principal: str, keeper: int) -> int:
        """``keeper`` when it is a process of the principal's uid (or one started here)."""
        if keeper in self._started:
            return keeper
        uid = self._uids.get(principal) if self._uids.known(principal) else None
        if uid is None or keeper <= 1 or real_uid(keeper) != uid:
            raise LauncherError(f"sandbox for {principal}: pid {keeper} is not its keeper")
        return keeper

    # -- the socket link and the workspace ---------------------------------------------

    def _proxy_socket(self, principal: str) -> Path:
        """The principal's own proxy socket (as the launcher names it): never another's."""
        try:
            localpart, _ = names.parse_user_id(principal)
            socket = self._run_dir / names.proxy_socket_relpath(localpart)
        except names.InvalidName as exc:
            raise LauncherError(f"sandbox for {principal!r}: {exc}") from None
        if not stat.S_ISSOCK(socket.lstat().st_mode):
            raise LauncherError(f"sandbox for {principal}: {socket} is not a socket")
        return socket

    def _link(self, principal: str) -> Path:
        """Put the principal's current proxy socket in its sandbox directory, reachable by
        its uid only: group = the sandbox's gid, mode 0660."""
        uid = self._uids.get(principal)
        socket = self._proxy_socket(principal)
        directory = self._links / key_of(principal)
        make_dirs(self._links, 0o711)
        make_dirs(directory, 0o710)
        os.chown(directory, -1, uid)
        os.chown(socket, -1, uid, follow_symlinks=False)
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
        if (self._links / key_of(principal)).is_dir() and self._uids.known(principal):
            try:
                self._link(principal)
            except OSError as exc:
                raise _failed(principal, exc) from None

    def _workspace(self, principal: str, uid: int) -> Path:
        path = self._workspaces / key_of(principal)
        make_dirs(self._workspaces, 0o711)  # others pass through, see nothing
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise LauncherError(f"sandbox for {principal}: workspace {path} is not a directory")
        if info.st_uid != uid or info.st_gid != uid or info.st_mode & 0o7777 != 0o700:
            # A workload may have changed its own workspace's mode. Without CAP_FOWNER, own
            # the directory for a moment (CAP_CHOWN) to set it right.
            os.chown(path, os.getuid(), -1, follow_symlinks=False)
            path.chmod(0o700)
            os.chown(path, uid, uid, follow_symlinks=False)
        return path

    # -- starting ------------------------------------------------------------------------

    def start(
        self, principal: str, content: dict[str, Any], credentials: Sequence[str]
    ) -> tuple[int, int]:
        """Start the principal's sandbox: (the keeper's pid, the read end of the pipe its
        output goes to; the caller's to close)."""
        checked = self.check(principal, content, credentials)
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
            raise _failed(principal, exc) from None
        # What an earlier sandbox of the principal left (one nobody recorded, say) must not
        # run beside the new one, nor count against its limits.
        if not self.emptied(principal):
            raise LauncherError(f"sandbox for {principal}: an earlier sandbox's processes live on")
        try:
            workspace = self._workspace(principal, uid)
            socket_dir = self._link(principal)
            group = self._cgroups.create(
                key_of(principal),
                memory=checked.memory_bytes,
                pids=checked.pids + OVERHEAD,
                cpu_shares=checked.cpu_shares,
            )
            make_dirs(self._exits, 0o700)
        except OSError as exc:
            raise _failed(principal, exc) from None
        pid, started, log_r = start(
            principal=principal,
            checked=checked,
            uid=uid,
            workspace=workspace,
            socket_dir=socket_dir,
            group=group,
            exit_file=self._exits / f"{key_of(principal)}.json",
        )
        self._started[pid] = started
        return pid, log_r

    # -- ending --------------------------------------------------------------------------

    def emptied(self, principal: str) -> bool:
        """SIGKILL whatever the principal's cgroup holds until it is empty; whether it is."""
        group = self._cgroups.existing(key_of(principal))
        deadline = time.monotonic() + CLEAR_TIMEOUT
        while group is not None and group.pids():
            if time.monotonic() > deadline:
                return False
            group.kill()
            time.sleep(CLEAR_POLL)
        return True

    def finish(self, principal: str, keeper: int, *, reaped: bool) -> str | None:
        """The keeper has exited: bwrap's outer process with it, and its inner one dies of
        that (--die-with-parent), with every process in the pid namespace. Wait until they
        are gone, reap what is ours (the keeper too, unless the caller has: ``reaped``), and
        say how the sandbox ended (None: nobody knows)."""
        started = self._started.pop(keeper, None)
        how = reap_exited(keeper) if started is not None and not reaped else "status unknown"
        try:
            gone = True
            if started is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(started.inner, signal.SIGKILL)
                poller = select.poll()
                poller.register(started.inner, select.POLLIN)
                gone = bool(poller.poll(CLEAR_TIMEOUT * 1000))
            if not (self.emptied(principal) and gone):
                raise LauncherError(f"sandbox for {principal}: its processes outlived it")
        finally:
            if started is not None:
                with contextlib.suppress(ChildProcessError):
                    # Ours when bwrap's outer process exited before it.
                    os.waitid(os.P_PIDFD, started.inner, os.WEXITED | os.WNOHANG)
                os.close(started.inner)
        if how == "status unknown":
            return exit_status(self._exits / f"{key_of(principal)}.json")
        return how

    def terminate(self, principal: str, keeper: int) -> None:
        """SIGTERM to the workload's processes: bwrap's own two pass it on to nobody."""
        keeper = self._keeper(principal, keeper)
        workload = descendants(keeper)[2:]  # below bwrap's outer and inner processes
        for pid in workload:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not workload:  # nothing of the workload is left to drain
            self.kill(principal, keeper)

    def kill(self, principal: str, keeper: int) -> None:
        """SIGKILL the keeper: bwrap's outer process dies with it, its inner one with that,
        and every process in the pid namespace with the inner one."""
        keeper = self._keeper(principal, keeper)
        with contextlib.suppress(ProcessLookupError):
            os.kill(keeper, signal.SIGKILL)
        started = self._started.get(keeper)
        if started is not None:  # the pid namespace's init: every process in it dies
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(started.inner, signal.SIGKILL)
        group = self._cgroups.existing(key_of(principal))
        if group is not None:
            group.kill()

    def removed(self, principal: str) -> None:
        """The workspace stays (the principal's data); its socket link and cgroup go."""
        with contextlib.suppress(FileNotFoundError):
            (self._exits / f"{key_of(principal)}.json").unlink()
        with contextlib.suppress(FileNotFoundError):
            (self._links / key_of(principal) / LINK_NAME).unlink()
        with contextlib.suppress(OSError):
            (self._links / key_of(principal)).rmdir()
        group = self._cgroups.existing(key_of(principal))
        if group is not None:
            group.kill()
            group.remove()

    def sweep(self, adopted: set[int]) -> list[str]:
        """Kill each sandbox whose keeper nobody adopted (found by its cgroup, where there
        are cgroups); the principals it was for."""
        killed = []
        for principal in self._uids.principals():
            group = self._cgroups.existing(key_of(principal))
            if group is not None and group.pids() and not adopted & set(group.pids()):
                group.kill()
                killed.append(principal)
        return killed

    def workload(self, principal: str, keeper: int) -> tuple[int, int, float]:
        """(workload pid, memory in bytes, CPU seconds) of a running sandbox."""
        keeper = self._keeper(principal, keeper)
        pids = descendants(keeper)
        workload = pids[2] if len(pids) > 2 else 0  # below bwrap's outer and inner processes
        group = self._cgroups.existing(key_of(principal))
        memory = group.memory_bytes() if group is not None else None
        cpu = 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        rss = 0
        for pid in [keeper, *pids]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat_line = Path(f"/proc/{pid}/stat").read_text()
                fields = stat_line[stat_line.rindex(")") + 2 :].split()
                cpu += (int(fields[11]) + int(fields[12])) / ticks
                rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return workload, memory if memory is not None else rss, cpu
