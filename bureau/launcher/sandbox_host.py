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
import os
import select
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bureau.files import make_dirs
from bureau.launcher import sandbox_policy as policy
from bureau.launcher.cgroups import Cgroups
from bureau.launcher.children import LauncherError
from bureau.launcher.processes import (
    children_of,
    pids_of_uid,
    process_status,
    real_uid,
    reap_exited,
    signal_as,
)
from bureau.launcher.sandbox_paths import (
    LINK_NAME,
    key_of,
    link_socket,
    prepare_workspace,
    unreachable,
)
from bureau.launcher.sandbox_start import OVERHEAD, Started, descendants, exit_status, start
from bureau.launcher.sandbox_uids import SandboxUids
from bureau.wire import names
from bureau.wire.sandbox_spec import SandboxSpec

CLEAR_TIMEOUT = 10.0  # for a SIGKILLed sandbox's processes to be gone
CLEAR_POLL = 0.01


def _failed(principal: str, exc: OSError) -> LauncherError:
    where = f" ({exc.filename})" if exc.filename else ""
    return LauncherError(f"sandbox for {principal}: {exc.strerror or type(exc).__name__}{where}")


@dataclass
class _Running:
    """A keeper started here, until its principal's finish."""

    principal: str
    started: Started
    how: str | None = None  # how it ended, once reaped here


class SandboxHost:
    def __init__(
        self,
        *,
        sandbox_dir: Path,
        run_dir: Path,
        machine: policy.Machine,
        uids: SandboxUids,
        cgroups: Cgroups,
        fleet: tuple[str, str],
    ) -> None:
        """``fleet``: (server name, fleet) whose principals alone run here."""
        self._server, self._fleet = fleet
        self._workspaces = sandbox_dir
        self._run_dir = run_dir
        self._links = run_dir / "sandbox"
        self._exits = run_dir / "launcher" / "exits"  # bwrap's status files
        self._machine = machine
        self._uids = uids
        self._cgroups = cgroups
        self._started: dict[int, _Running] = {}  # by keeper pid
        # Requests come on threads of their own: one uid map, one principal at a time.
        self._lock = threading.Lock()
        self._principal_locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def _serialised(self, principal: str) -> Iterator[None]:
        """One request for ``principal`` at a time, checked as a principal of the fleet."""
        try:
            names.check_fleet_principal(principal, self._server, self._fleet)
        except names.InvalidName as exc:
            raise LauncherError(f"sandbox: {exc}") from None
        with self._lock:
            lock = self._principal_locks.setdefault(principal, threading.Lock())
        with lock:
            yield

    @property
    def mode(self) -> str:
        """How sandbox limits are enforced here: v2, v1, or none (rlimits only)."""
        return self._cgroups.mode

    def known(self, principal: str) -> bool:
        with self._lock:
            return self._uids.known(principal)

    def _uid(self, principal: str) -> int | None:
        with self._lock:
            return self._uids.get(principal) if self._uids.known(principal) else None

    # -- checks --------------------------------------------------------------------------

    def check(
        self, principal: str, spec: SandboxSpec, credentials: Sequence[str]
    ) -> policy.Checked:
        """``credentials``: the names the principal's bundle holds."""
        with self._serialised(principal):
            return self._check(principal, spec, credentials)

    def _check(
        self, principal: str, spec: SandboxSpec, credentials: Sequence[str]
    ) -> policy.Checked:
        try:
            return policy.check(spec, self._machine, credentials)
        except policy.SpecRefused as exc:
            raise LauncherError(f"sandbox for {principal}: {exc}") from None

    def _keeper(self, principal: str, keeper: int) -> int:
        """The principal's uid, when ``keeper`` is its sandbox's keeper: one started here
        for it, or a live process of its uid (a keeper an earlier bureau-sandboxd
        started)."""
        uid = self._uid(principal)
        running = self._started.get(keeper)
        mine = running is not None and running.principal == principal
        if uid is None or not (mine or (keeper > 1 and real_uid(keeper) == uid)):
            raise LauncherError(f"sandbox for {principal}: pid {keeper} is not its keeper")
        return uid

    # -- the socket link and the workspace ---------------------------------------------

    def _proxy_socket(self, principal: str) -> Path:
        """The principal's own proxy socket (as the launcher names it): never another's."""
        return self._run_dir / names.PrincipalRef.from_user_id(principal).proxy_socket_relpath

    def _link(self, principal: str) -> Path:
        socket = self._proxy_socket(principal)
        return link_socket(principal, socket, self._links, self._uids.get(principal))

    def relink(self, principal: str) -> None:
        """After the proxy was replaced: the sandbox's link follows it."""
        with self._serialised(principal):
            if (self._links / key_of(principal)).is_dir() and self._uid(principal) is not None:
                try:
                    self._link(principal)
                except OSError as exc:
                    raise _failed(principal, exc) from None

    # -- starting ------------------------------------------------------------------------

    def start(
        self, principal: str, spec: SandboxSpec, credentials: Sequence[str]
    ) -> tuple[int, int]:
        """Start the principal's sandbox: (the keeper's pid, the read end of the pipe its
        output goes to; the caller's to close)."""
        with self._serialised(principal):
            return self._start(principal, spec, credentials)

    def _start(
        self, principal: str, spec: SandboxSpec, credentials: Sequence[str]
    ) -> tuple[int, int]:
        checked = self._check(principal, spec, credentials)
        try:
            self._proxy_socket(principal).lstat()  # its proxy runs: it is the launcher's
        except OSError as exc:
            raise LauncherError(
                f"sandbox for {principal}: no proxy socket ({exc.strerror})"
            ) from None
        for path in (self._workspaces, self._links):
            closed = unreachable(path)
            if closed is not None:
                # bwrap sets up the sandbox as the sandbox's uid: it must reach both.
                raise LauncherError(
                    f"sandbox for {principal}: {closed} does not let others pass through "
                    f"to {path} (chmod o+x {closed})"
                )
        try:
            with self._lock:
                uid = self._uids.allocate(principal)
        except OSError as exc:
            raise _failed(principal, exc) from None
        # What an earlier sandbox of the principal left (one nobody recorded, or whose
        # finish never came) must not run beside the new one, nor count against its limits.
        if not self._emptied(principal, uid):
            raise LauncherError(f"sandbox for {principal}: an earlier sandbox's processes live on")
        self._forget_ended(principal)
        self._reap_orphans()
        try:
            workspace = prepare_workspace(principal, self._workspaces, uid)
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
        with self._lock:
            self._started[pid] = _Running(principal, started)
        return pid, log_r

    # -- ending --------------------------------------------------------------------------

    def _pids(self, principal: str, uid: int) -> set[int]:
        """The principal's sandbox processes: its uid's, and its cgroup's of its uid."""
        group = self._cgroups.existing(key_of(principal))
        in_group = set(group.pids()) if group is not None else set()
        return pids_of_uid(uid) | {p for p in in_group if real_uid(p) == uid}

    def _kill_all(self, principal: str, uid: int) -> None:
        for pid in self._pids(principal, uid):
            signal_as(pid, uid, signal.SIGKILL)

    def _emptied(self, principal: str, uid: int) -> bool:
        """SIGKILL the principal's sandbox processes until none is left; whether none is."""
        deadline = time.monotonic() + CLEAR_TIMEOUT
        while self._pids(principal, uid):
            if time.monotonic() > deadline:
                return False
            self._kill_all(principal, uid)
            time.sleep(CLEAR_POLL)
        return True

    def _forget_ended(self, principal: str) -> None:
        """Keepers of ``principal`` started here whose finish never came (their
        launcher was gone, say): reaped, and their descriptors closed."""
        with self._lock:
            stale = [pid for pid, r in self._started.items() if r.principal == principal]
            for pid in stale:
                running = self._started.pop(pid)
                reap_exited(pid)
                os.close(running.started.inner)

    def _reap_orphans(self) -> None:
        """Zombies of sandbox uids this process inherited as a subreaper (the bwrap of a
        keeper that was killed) and does not track: reaped, or each would count against
        its uid's RLIMIT_NPROC, and so its sandbox's processes, for good."""
        with self._lock:
            uids = {self._uids.get(p) for p in self._uids.principals()}
            tracked = set(self._started)
        for child in children_of(os.getpid()):
            found = process_status(child)
            if child not in tracked and found is not None and found[1] and found[0] in uids:
                reap_exited(child)

    def finish(self, principal: str, keeper: int, *, reaped: bool) -> str | None:
        """The keeper has exited: bwrap's outer process with it, and its inner one dies of
        that (--die-with-parent), with every process in the pid namespace. Wait until they
        are gone, reap what is ours (the keeper too, unless the caller has: ``reaped``), and
        say how the sandbox ended (None: nobody knows)."""
        with self._serialised(principal):
            return self._finish(principal, keeper, reaped=reaped)

    def _finish(self, principal: str, keeper: int, *, reaped: bool) -> str | None:
        uid = self._uid(principal)
        with self._lock:
            running = self._started.get(keeper)
            if running is not None and running.principal != principal:
                raise LauncherError(f"sandbox for {principal}: pid {keeper} is not its keeper")
            if running is None and uid is not None and process_status(keeper) == (uid, False):
                raise LauncherError(f"sandbox for {principal}: its keeper {keeper} still runs")
            self._started.pop(keeper, None)
        how = "status unknown"
        if running is not None and not reaped:
            how = reap_exited(keeper)
        try:
            gone = True
            if running is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(running.started.inner, signal.SIGKILL)
                poller = select.poll()
                poller.register(running.started.inner, select.POLLIN)
                gone = bool(poller.poll(CLEAR_TIMEOUT * 1000))
            self._reap_orphans()
            if uid is not None and not (self._emptied(principal, uid) and gone):
                raise LauncherError(f"sandbox for {principal}: its processes outlived it")
        finally:
            if running is not None:
                with contextlib.suppress(ChildProcessError):
                    # Ours when bwrap's outer process exited before it.
                    os.waitid(os.P_PIDFD, running.started.inner, os.WEXITED | os.WNOHANG)
                os.close(running.started.inner)
        if how == "status unknown":
            return exit_status(self._exits / f"{key_of(principal)}.json")
        return how

    def terminate(self, principal: str, keeper: int) -> None:
        """SIGTERM to the workload's processes: bwrap's own two pass it on to nobody."""
        with self._serialised(principal):
            uid = self._keeper(principal, keeper)
            workload = descendants(keeper)[2:]  # below bwrap's outer and inner processes
            signalled = [pid for pid in workload if signal_as(pid, uid, signal.SIGTERM)]
            if not signalled:  # nothing of the workload is left to drain
                self._kill(principal, keeper, uid)

    def kill(self, principal: str, keeper: int) -> None:
        """SIGKILL the keeper: bwrap's outer process dies with it, its inner one with that,
        and every process in the pid namespace with the inner one; and whatever else runs
        as the principal's uid."""
        with self._serialised(principal):
            self._kill(principal, keeper, self._keeper(principal, keeper))

    def _kill(self, principal: str, keeper: int, uid: int) -> None:
        running = self._started.get(keeper)
        if running is not None and running.how is None:  # ours, not reaped: still its pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(running.started.inner, signal.SIGKILL)
        self._kill_all(principal, uid)

    def removed(self, principal: str) -> None:
        """The workspace stays (the principal's data); its processes, socket link and
        cgroup go."""
        with self._serialised(principal):
            with contextlib.suppress(FileNotFoundError):
                (self._exits / f"{key_of(principal)}.json").unlink()
            with contextlib.suppress(FileNotFoundError):
                (self._links / key_of(principal) / LINK_NAME).unlink()
            with contextlib.suppress(OSError):
                (self._links / key_of(principal)).rmdir()
            uid = self._uid(principal)
            if uid is not None:
                self._kill_all(principal, uid)
            group = self._cgroups.existing(key_of(principal))
            if group is not None:
                group.remove()

    def sweep(self, adopted: set[int]) -> list[str]:
        """Kill each sandbox whose keeper nobody adopted (its processes found by its uid);
        the principals it was for."""
        with self._lock:
            principals = {p: self._uids.get(p) for p in self._uids.principals()}
        killed = []
        for principal, uid in principals.items():
            pids = self._pids(principal, uid)
            if pids and not adopted & pids:
                self._kill_all(principal, uid)
                killed.append(principal)
        return killed

    def workload(self, principal: str, keeper: int) -> tuple[int, int, float]:
        """(workload pid, memory in bytes, CPU seconds) of a running sandbox."""
        with self._serialised(principal):
            uid = self._keeper(principal, keeper)
        pids = [p for p in descendants(keeper) if real_uid(p) == uid]
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
