"""A principal's sandbox as a kind of supervised child: bubblewrap, started by the launcher
as the principal's own uid, with every namespace new, its workspace at /workspace and its
proxy's socket at /run/bureau/proxy.sock as the only way out (sandbox_policy.py).

The child the launcher supervises is bwrap's outer process. It is started blocked
(--block-fd): both its processes are moved into the sandbox's cgroup before anything of
the workload runs. bwrap is started in a session of its own and outlives the launcher, so
that the next launcher adopts it: it runs without --die-with-parent, which bwrap applies to
its outer process too (SIGKILL when the launcher dies). bwrap's outer process exits when
the workload's first process does; what that left running (bwrap's inner process, the pid
namespace's init, waits for every process in it) is ended by the launcher then
(``ended``): every process running as the sandbox's uid, which is the principal's alone.
The launcher also reaps what it inherits as a subreaper (that inner process, the relay).

The proxy socket reaches the sandbox through a directory of the principal's own that holds
a hard link to it: a rotated proxy's new socket is linked there (link() then rename()),
so the running workload's next connection reaches the new proxy. The workload's output
goes to the journal through a small relay (sandbox_log.py) forked by the proxy template.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bureau.files import make_dirs
from bureau.launcher import sandbox_policy as policy
from bureau.launcher.cgroups import Cgroups, Group
from bureau.launcher.children import Child, LauncherError
from bureau.launcher.processes import reap
from bureau.launcher.sandbox_uids import SandboxUids
from bureau.launcher.spawner import Spawner, SpawnError

START_TIMEOUT = 20.0
GRACE_SECONDS = 10.0
CLEAR_TIMEOUT = 10.0  # for what a sandbox left to end once SIGKILLed
CLEAR_POLL = 0.01
LINK_NAME = "proxy.sock"
# bwrap's outer and inner processes, in the sandbox's cgroup and running as its uid: the
# pids limit is the workload's own.
BWRAP_PROCESSES = 2
# bwrap applies it to its outer process as well as its inner one (see the module's doc).
OUTER_DIES = "--die-with-parent"


def _key(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants, parents before children (/proc/PID/task/TID/children)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop(0)
        try:
            tasks = [t.name for t in Path(f"/proc/{current}/task").iterdir()]
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                found += map(int, children)
                queue += map(int, children)
    return found


def uid_of(pid: int) -> int | None:
    """The real uid of a live process (None for one gone or a zombie)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        if fields["State"].strip().startswith("Z"):
            return None
        return int(fields["Uid"].split()[0])
    except (OSError, ValueError, IndexError, KeyError):
        return None


def processes_of(uid: int) -> list[int]:
    """The processes (zombies aside) whose real uid is ``uid``."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if uid_of(pid) == uid]


def kill_all(uid: int) -> list[int]:
    """SIGKILL every process running as ``uid``; those signalled (not yet gone)."""
    pids = processes_of(uid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@dataclass
class Started:
    """What the launcher holds for a sandbox it started, until the sandbox has ended."""

    inner: int  # a pidfd of bwrap's inner process: its pid namespace's init
    status: int  # the read end of bwrap's status pipe, which bwrap writes on exit too


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
        if info.st_uid != uid or info.st_gid != uid or info.st_mode & 0o7777 != 0o700:
            path.chmod(0o700, follow_symlinks=False)
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
        # What an earlier sandbox of the principal left (its bwrap died while no launcher
        # ran) must not run beside the new one, nor count against its limits.
        if not await self._clear(uid):
            raise LauncherError(f"sandbox for {principal}: an earlier sandbox's processes live on")
        try:
            workspace = self._workspace(principal, uid)
            socket_dir = self.link_socket(principal)
            group = self._cgroups.create(
                _key(principal),
                memory=checked.memory_bytes,
                pids=checked.pids + BWRAP_PROCESSES,
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
                    self._start,
                    principal=principal,
                    checked=checked,
                    uid=uid,
                    workspace=workspace,
                    socket_dir=socket_dir,
                    group=group,
                    relays=relays,
                )
            )
        finally:
            for relay in relays:
                self._reap_when_done(relay)
        self._started[pid] = started
        return pid

    def _start(
        self,
        *,
        principal: str,
        checked: policy.Checked,
        uid: int,
        workspace: Path,
        socket_dir: Path,
        group: Group | None,
        relays: list[int],
    ) -> tuple[int, Started]:
        """bwrap's outer pid. ``relays`` gets the pid of the relay started for it (the
        launcher's to reap, whether or not the sandbox started)."""
        opened: list[int] = []
        try:
            ws_fd = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.append(ws_fd)
            dir_fd = os.open(socket_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.append(dir_fd)
            block_r, block_w = os.pipe2(os.O_CLOEXEC)
            opened += [block_r, block_w]
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            opened += [status_r, status_w]
            log_r, log_w = os.pipe2(os.O_CLOEXEC)
            opened += [log_r, log_w]
            argv = policy.bwrap_argv(
                checked,
                workspace_fd=ws_fd,
                socket_dir_fd=dir_fd,
                block_fd=block_r,
                status_fd=status_w,
            )
            if OUTER_DIES in argv[:8]:  # among bwrap's fixed leading flags, never the command
                argv.remove(OUTER_DIES)
            limits = [
                f"--nproc={checked.pids + BWRAP_PROCESSES}",
                f"--nofile={policy.OPEN_FILES}",
                "--core=0",
            ]
            process = subprocess.Popen(
                ["prlimit", *limits, "--", *argv],
                user=uid,
                group=uid,
                extra_groups=[],
                pass_fds=(ws_fd, dir_fd, block_r, status_w),
                stdin=subprocess.DEVNULL,
                stdout=log_w,
                stderr=log_w,
                cwd="/",
                env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
                start_new_session=True,
            )
            # Reaped by the launcher's own watcher (by pid), never by subprocess.
            process.returncode = 0
            pid = process.pid
            for fd in (ws_fd, dir_fd, block_r, status_w, log_w):
                os.close(fd)
                opened.remove(fd)
            relay = self._relay(principal, log_r)
            opened.remove(log_r)
            if relay is not None:
                relays.append(relay)
            try:
                inner = self._child_pid(status_r)
                inner_fd = os.pidfd_open(inner)
                opened.append(inner_fd)
                if group is not None:
                    group.add(pid)
                    group.add(inner)
                os.write(block_w, b"go")
            except (OSError, ValueError) as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                how = reap(pid)
                # What it had started goes too: it runs as the sandbox's uid.
                deadline = time.monotonic() + CLEAR_TIMEOUT
                while kill_all(uid) and time.monotonic() < deadline:
                    time.sleep(CLEAR_POLL)
                raise LauncherError(
                    f"sandbox for {principal} did not start ({how}): {exc}"
                ) from None
            # Held until the sandbox has ended: bwrap writes its exit code there last, and
            # a closed pipe would kill it with SIGPIPE instead of its workload's status.
            opened.remove(status_r)
            opened.remove(inner_fd)
            return pid, Started(inner_fd, status_r)
        except OSError as exc:
            raise LauncherError(
                f"sandbox for {principal}: {exc.strerror or type(exc).__name__}"
            ) from None
        finally:
            for fd in opened:
                os.close(fd)

    @staticmethod
    def _child_pid(status_fd: int) -> int:
        """bwrap's first status line names its inner process (as seen from here)."""
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(status_fd, 512)
            if not chunk:
                raise ValueError("bwrap exited before setting up the sandbox")
            line += chunk
        return int(json.loads(line)["child-pid"])

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

    async def _clear(self, uid: int) -> bool:
        """End every process running as the sandbox's uid; whether they are all gone."""
        deadline = time.monotonic() + CLEAR_TIMEOUT
        while kill_all(uid):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(CLEAR_POLL)
        return True

    async def ended(self, child: Child) -> None:
        """bwrap has exited: what its sandbox left running goes (as --die-with-parent did
        for bwrap's inner process, while a launcher runs), bwrap's inner process is reaped
        if the launcher inherited it, and the status pipe is closed."""
        started = self._started.pop(child.pid, None)
        try:
            if started is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(started.inner, signal.SIGKILL)
            if not await self._clear(self._uids.get(child.principal)):
                self._log.error("a sandbox's processes outlived it", principal=child.principal)
        except Exception as exc:  # must not raise: see Children._watch
            self._log.error(
                "could not end what a sandbox left", principal=child.principal, error=repr(exc)
            )
        finally:
            if started is not None:
                with contextlib.suppress(ChildProcessError):
                    # Ours when bwrap's outer process exited before it (it then has ended).
                    os.waitid(os.P_PIDFD, started.inner, os.WEXITED | os.WNOHANG)
                os.close(started.inner)
                os.close(started.status)

    def should_restart(self, spec: dict[str, Any], how: str) -> bool:
        policy_name = str(spec.get("restart_policy", "on-failure"))
        if policy_name == "always":
            return True
        return policy_name == "on-failure" and how != "status 0"

    def terminate(self, child: Child) -> None:
        """SIGTERM to the workload's processes: bwrap's own two pass it on to nobody."""
        inner = descendants(child.pid)
        for pid in inner[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if len(inner) <= 1:  # nothing of the workload is left to drain
            self.kill(child)

    def kill(self, child: Child) -> None:
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
            (self._links / _key(principal) / LINK_NAME).unlink()
        with contextlib.suppress(OSError):
            (self._links / _key(principal)).rmdir()
        group = self._cgroups.existing(_key(principal))
        if group is not None:
            group.kill()
            group.remove()

    def sweep(self, adopted: set[int]) -> None:
        """Sandboxes are found by their records only: one whose record is gone was never
        installed (or its record could not be written), and nobody adopts it. Everything
        of it runs as its principal's uid, and is killed."""
        kept = {uid_of(pid) for pid in adopted}
        for uid in sorted(self._uids.uids() - kept):
            if kill_all(uid):
                self._log.warning("killed a sandbox that nobody adopted", uid=uid)

    def workload(self, child: Child) -> tuple[int, int, float]:
        """(workload pid, memory in bytes, CPU seconds) of a running sandbox."""
        pids = descendants(child.pid)
        workload = pids[1] if len(pids) > 1 else 0
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
