"""One process the embedded hub starts and later stops (Synapse, PostgreSQL, coturn): run
in a session of its own with its output appended to a file in the state directory,
recorded as pid and kernel start time so that a reused pid is never taken for it, and
stopped with the signal its program treats as a prompt clean shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bureau.files import atomic_write
from bureau.launcher.processes import process_start_time


@dataclass(frozen=True)
class Account:
    """Whom a process runs as when it is not the hub's own user."""

    name: str
    uid: int
    gid: int


class HubProcess:
    def __init__(self, pid_file: Path, out_file: Path, stop_signal: int = signal.SIGTERM) -> None:
        self.pid_file = pid_file
        self.out_file = out_file
        self._stop_signal = stop_signal
        # Held so that the process we started is reaped by us, not reported as leaked.
        self._child: subprocess.Popen[bytes] | None = None

    def running_pid(self) -> int | None:
        """The pid we started, if that very process is still alive (not a reused pid)."""
        try:
            data = json.loads(self.pid_file.read_text())
            pid, started = int(data["pid"]), int(data["start_time"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return pid if process_start_time(pid) == started else None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        account: Account | None = None,
    ) -> subprocess.Popen[bytes]:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        out = os.fdopen(os.open(self.out_file, flags, 0o600), "ab")
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env=env,
                # What these programs write (databases of access tokens, logs) is their
                # user's alone, whatever umask the operator runs with.
                umask=0o077,
                user=None if account is None else account.uid,
                group=None if account is None else account.gid,
                extra_groups=None if account is None else [],
            )
        finally:
            out.close()
        self._child = proc
        started = process_start_time(proc.pid)
        record = json.dumps({"pid": proc.pid, "start_time": started}).encode()
        atomic_write(self.pid_file, record, 0o644)
        return proc

    def last_output(self) -> str:
        with contextlib.suppress(OSError):
            text = self.out_file.read_text(errors="replace")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return f"{lines[-1]} (see {self.out_file})"
        return f"no output (see {self.out_file})"

    def stop(self, grace: float = 30) -> int | None:
        """Stop the process we started; returns its pid, or None if none ran."""
        pid = self.running_pid()
        if pid is not None:
            _terminate(pid, self._stop_signal, grace)
        if self._child is not None:
            self._child.wait()
            self._child = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        return pid


def minimal_env(**extra: str) -> dict[str, str]:
    """What the hub's programs need from our environment: PATH and locale, never sd_notify
    sockets or anything else a caller put there."""
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")
    return {**{k: v for k, v in os.environ.items() if k in keep}, **extra}


def _terminate(pid: int, sig: int, grace: float) -> None:
    started = process_start_time(pid)
    if started is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while process_start_time(pid) == started:
        _reap(pid)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
