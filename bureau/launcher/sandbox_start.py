"""Starting one sandbox (blocking): the keeper, prlimit and bwrap as the sandbox's uid,
with the workspace, the socket link, the block and status pipes and the seccomp filter
passed as descriptors; the keeper and bwrap's two processes moved into the sandbox's
cgroup while bwrap waits on its block pipe; then the go-ahead. The caller
(sandbox_host.py) owns what it returns."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bureau.launcher import sandbox_policy as policy
from bureau.launcher import seccomp
from bureau.launcher.cgroups import Group
from bureau.launcher.children import LauncherError
from bureau.launcher.processes import children_of, reap

KEEPER = ["setsid", "--fork", "--wait"]
# The keeper and bwrap's two processes, in the sandbox's cgroup and running as its uid:
# the pids limit is the workload's own.
OVERHEAD = 3


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants, parents before children."""
    found: list[int] = []
    queue = [pid]
    while queue:
        children = children_of(queue.pop(0))
        found += children
        queue += children
    return found


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


@dataclass
class Started:
    """What the launcher holds for a sandbox it started, until the sandbox has ended."""

    inner: int  # a pidfd of bwrap's inner process: its pid namespace's init


def start(
    *,
    principal: str,
    checked: policy.Checked,
    uid: int,
    workspace: Path,
    socket_dir: Path,
    group: Group | None,
    exit_file: Path,
) -> tuple[int, Started, int]:
    """The keeper's pid, and the read end of the pipe the workload's output goes to (the
    caller's to close, once it has handed it to a log relay)."""
    opened: list[int] = []
    try:
        ws_fd = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(ws_fd)
        dir_fd = os.open(socket_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(dir_fd)
        block_r, block_w = os.pipe2(os.O_CLOEXEC)
        opened += [block_r, block_w]
        # bwrap writes its status there, the exit code last: a file (the launcher's, 0600,
        # open for bwrap through this descriptor only) outlives a launcher restart, so the
        # next launcher learns how an adopted sandbox ended; and a file never kills bwrap
        # with SIGPIPE as a pipe whose reader is gone does.
        status_w = os.open(
            exit_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        opened.append(status_w)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)  # the inner process's pid, once
        opened += [info_r, info_w]
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        opened += [log_r, log_w]
        filter_fd = _seccomp_fd()
        if filter_fd is not None:
            opened.append(filter_fd)
        argv = policy.bwrap_argv(
            checked,
            workspace_fd=ws_fd,
            socket_dir_fd=dir_fd,
            block_fd=block_r,
            status_fd=status_w,
            info_fd=info_w,
            seccomp_fd=filter_fd,
        )
        limits = [
            f"--nproc={checked.pids + OVERHEAD}",
            f"--nofile={policy.OPEN_FILES}",
            "--core=0",
        ]
        process = subprocess.Popen(
            [*KEEPER, "prlimit", *limits, "--", *argv],
            user=uid,
            group=uid,
            extra_groups=[],
            pass_fds=(ws_fd, dir_fd, block_r, status_w, info_w)
            + ((filter_fd,) if filter_fd is not None else ()),
            stdin=subprocess.DEVNULL,
            stdout=log_w,
            stderr=log_w,
            cwd="/",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            start_new_session=True,
            umask=0o077,  # what the workload creates is its own, whatever ours is
        )
        # Reaped by the launcher's own watcher (by pid), never by subprocess.
        process.returncode = 0
        pid = process.pid
        for fd in (ws_fd, dir_fd, block_r, status_w, info_w, log_w, filter_fd):
            if fd is not None:
                os.close(fd)
                opened.remove(fd)
        try:
            inner = _child_pid(info_r)
            inner_fd = os.pidfd_open(inner)
            opened.append(inner_fd)
            if group is not None:
                for member in (pid, parent_of(inner), inner):  # keeper, bwrap's two
                    group.add(member)
            os.write(block_w, b"go")
        except (OSError, ValueError) as exc:
            # bwrap dies with the keeper, and its inner process with it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            how = reap(pid)
            raise LauncherError(f"sandbox for {principal} did not start ({how}): {exc}") from None
        # Held until the sandbox has ended: bwrap writes its exit code there last, and
        # a closed pipe would kill it with SIGPIPE instead of its workload's status.
        opened.remove(inner_fd)
        opened.remove(log_r)
        return pid, Started(inner_fd), log_r
    except OSError as exc:
        raise LauncherError(
            f"sandbox for {principal}: {exc.strerror or type(exc).__name__}"
        ) from None
    finally:
        for fd in opened:
            os.close(fd)


def _seccomp_fd() -> int | None:
    """A pipe holding the sandbox's seccomp filter for bwrap to read, if this
    architecture has one (launcher/seccomp.py)."""
    program = seccomp.program()
    if program is None:
        return None
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write_end, program)  # a few hundred bytes: the pipe holds them
    finally:
        os.close(write_end)
    return read_end


def _child_pid(info_fd: int) -> int:
    """bwrap's info (one JSON object, over several lines) names its inner process, as
    seen from here."""
    text = b""
    while True:
        chunk = os.read(info_fd, 4096)
        if not chunk:
            raise ValueError("bwrap exited before setting up the sandbox")
        text += chunk
        try:
            return int(json.loads(text)["child-pid"])
        except ValueError:
            continue  # not all of it yet


def exit_status(exit_file: Path) -> str | None:
    """How bwrap said its sandbox ended ("status N", N the workload's exit code, 128 + a
    signal's number for a signal), from its status file; None when it did not say."""
    try:
        lines = exit_file.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError, TypeError):
            code = json.loads(line).get("exit-code")
            if isinstance(code, int):
                return f"status {code}"
    return None
