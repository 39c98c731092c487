"""What the launcher asks the kernel about its children: deliver a payload on a pipe, read
a readiness line, reap and describe an exit, a process's start time (so that a reused pid
is never mistaken for ours), and the processes of ours with a given title under the run
dir. No asyncio: callers run the blocking ones in a thread."""

from __future__ import annotations

import contextlib
import os
import select
import signal
from pathlib import Path


def deliver(fd: int, payload: bytes) -> None:
    """Write all of ``payload`` to ``fd`` and close it; a reader that died says so by its
    exit status, not here."""
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def ready_line(fd: int) -> bytes:
    """The child's first line (``READY`` or its reason for not being ready), then ``fd``
    is closed: nothing more is read from it."""
    line = b""
    try:
        while not line.endswith(b"\n") and len(line) < 256:
            chunk = os.read(fd, 256)
            if not chunk:
                break
            line += chunk
    finally:
        os.close(fd)
    return line


def describe_status(status: int) -> str:
    """A wait status as the launcher reports it: "status N" or "signal NAME"."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(number).name}"
        except ValueError:  # real-time signals have no name
            return f"signal {number}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def reap(pid: int) -> str:
    """Wait for a child of ours (forked for us, or reparented to us as the subreaper) and
    describe how it ended."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "status unknown"
    return describe_status(status)


def reap_exited(pid: int) -> str:
    """As reap(), for a child known to have exited: never waits (nor takes the status of
    another child that has its pid by now)."""
    try:
        found, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "status unknown"
    return describe_status(status) if found else "status unknown"


def process_start_time(pid: int) -> int | None:
    """Clock ticks after boot at which ``pid`` started; None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def titled_under(title: bytes, flag: bytes, run_dir: Path) -> list[int]:
    """Our own processes whose argv starts ``title flag PATH`` with PATH in run_dir."""
    found = []
    prefix = os.fsencode(run_dir) + b"/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Status, not the directory's owner: /proc of a non-dumpable process (every
            # proxy) belongs to root whoever runs it.
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        uid_line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
        if uid_line.split()[1:2] != [str(os.getuid())]:
            continue
        if argv[:2] == [title, flag] and argv[2:3] and argv[2].startswith(prefix):
            found.append(int(entry.name))
    return found


def process_status(pid: int) -> tuple[int, bool] | None:
    """(real uid, whether a zombie) of ``pid``, from /proc/PID/status; None when gone."""
    uid, zombie = None, False
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                zombie = line.split()[1] == "Z"
            elif line.startswith("Uid:"):
                uid = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None if uid is None else (uid, zombie)


def real_uid(pid: int) -> int | None:
    found = process_status(pid)
    return None if found is None else found[0]


def pids_of_uid(uid: int) -> set[int]:
    """Every live (not zombie) process whose real uid is ``uid``: a sandbox uid is one
    principal's alone, so these are its sandbox's processes, found with or without
    cgroups."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and process_status(int(entry.name)) == (uid, False):
            found.add(int(entry.name))
    return found


def signal_as(pid: int, uid: int, signum: int) -> bool:
    """Send ``signum`` to ``pid`` only if it runs as ``uid``: a pidfd holds the process
    from the check to the signal, so a pid reused meanwhile is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if real_uid(pid) != uid or select.select([fd], [], [], 0)[0]:
            return False  # another uid's, or exited since (its pid may be another's now)
        signal.pidfd_send_signal(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def children_of(pid: int) -> list[int]:
    """``pid``'s children, zombies included (/proc/PID/task/TID/children)."""
    found: list[int] = []
    try:
        tasks = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found
