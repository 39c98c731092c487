"""bureau-launcher and bureau-daemon as real long-running processes, their stderr
collected line by line so tests can wait for a log event and scan the whole log."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from processes import BIN


@dataclass
class Service:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _pumping: bool = True

    run_dir: Path | None = None  # a launcher's
    wrapped: bool = False

    @property
    def socket(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "launcher.sock"

    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, marker: str, timeout: float = 60, start: int = 0) -> int:
        """Wait until a log line from index ``start`` on contains ``marker``; its index."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(start, len(self.lines)):
                    if marker in self.lines[index]:
                        return index
                if self.proc.poll() is not None and not self._pumping:
                    raise AssertionError(f"exited before {marker!r}:\n{self.log()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {marker!r} within {timeout} s:\n{self.log()}")
                self._changed.wait(min(remaining, 0.5))

    def pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._pumping = False
            self._changed.notify_all()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.main_pid(), sig)
        return self.proc.wait(timeout=30)

    def main_pid(self) -> int:
        """The service's own pid, also when it runs under a wrapper such as strace."""
        if self.wrapped:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            return int(children.split()[0])
        return self.proc.pid


@contextlib.contextmanager
def service(
    argv: list[str],
    ready: str,
    *,
    prefix: list[str] | None = None,
    after_stop: Callable[[], None] = lambda: None,
    cwd: Path | None = None,
    prefix_forks: bool = True,
) -> Iterator[Service]:
    """``prefix_forks``: the prefix (strace) runs the service as its child; else it execs
    it (unshare), and the service keeps the prefix's pid."""
    with subprocess.Popen(
        [*(prefix or []), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    ) as proc:
        running = Service(proc, wrapped=bool(prefix) and prefix_forks)
        thread = threading.Thread(target=running.pump, daemon=True)
        thread.start()
        try:
            running.wait_for(ready)
            yield running
        finally:
            if proc.poll() is None:
                running.stop()
            # Children (proxies) share the stderr pipe: it ends only when they do.
            after_stop()
            thread.join(timeout=10)


RunningLauncher = Service
# For tests that hand the launcher requests of their own (no signed assignment, specs of
# their making), as a daemon relaying upstream-shaped events does: operator signatures are
# tested in tests/system/test_operator_signatures.py.
UNSIGNED = ("--allow-unsigned",)


@contextlib.contextmanager
def launcher(
    machine_name: str,
    state_dir: Path,
    run_dir: Path,
    *extra: str,
    program: list[str] | None = None,
) -> Iterator[RunningLauncher]:
    """``program`` replaces the bureau-launcher executable (a test runner around it)."""
    argv = [
        *(program or [str(BIN / "bureau-launcher")]),
        "--machine-name",
        machine_name,
        "--state-dir",
        str(state_dir),
        "--run-dir",
        str(run_dir),
        "--log-level",
        "debug",
        *extra,
    ]
    with service(argv, "launcher serving", after_stop=lambda: kill_proxies_under(run_dir)) as s:
        s.run_dir = run_dir
        yield s


@contextlib.contextmanager
def sandboxd(
    run_dir: Path, state_dir: Path, sandbox_dir: Path, *extra: str, fleet: str, server: str
) -> Iterator[Service]:
    """bureau-sandboxd for a launcher of ``run_dir`` (give that launcher broker_args()), in
    a network namespace of its own with loopback alone, as its unit's PrivateNetwork=yes
    puts it; ``fleet`` on ``server``: whose principals it runs."""
    argv = [
        str(BIN / "bureau-sandboxd"),
        "--fleet",
        fleet,
        "--server-name",
        server,
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(state_dir),
        "--sandbox-dir",
        str(sandbox_dir),
        "--log-level",
        "debug",
        *extra,
    ]
    with service(argv, "serving", prefix=["unshare", "--net"], prefix_forks=False) as s:
        s.run_dir = run_dir
        yield s


def broker_args(run_dir: Path) -> list[str]:
    return ["--sandbox-broker", str(run_dir / "sandboxd" / "sandboxd.sock")]


DAEMON_READY = "ready: first sync done"


def daemon_argv(machine_name: str, state_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "bureau-daemon"),
        "--machine-name",
        machine_name,
        "--state-dir",
        str(state_dir),
        "--run-dir",
        str(run_dir),
        "--log-level",
        "debug",
        "--heartbeat-interval",
        "2",
        *extra,
    ]


@contextlib.contextmanager
def daemon(
    machine_name: str, state_dir: Path, run_dir: Path, *extra: str, prefix: list[str] | None = None
) -> Iterator[Service]:
    argv = daemon_argv(machine_name, state_dir, run_dir, *extra)
    with service(argv, DAEMON_READY, prefix=prefix) as running:
        yield running


def proxies_under(run_dir: Path) -> list[int]:
    """Pids of bureau-proxy processes whose socket lies under run_dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # A proxy forked by the template is titled "bureau-proxy --socket PATH ...".
        is_proxy = b"bureau.proxy" in argv or argv[0] == b"bureau-proxy"
        if is_proxy and any(a.startswith(str(run_dir).encode()) for a in argv):
            found.append(int(entry.name))
    return found


def kill_proxies_under(run_dir: Path) -> None:
    for pid in proxies_under(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def template_of(launcher_pid: int) -> int:
    """The pid of the launcher's proxy template (a child titled bureau-proxy-template)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    for child in map(int, children):
        if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] == b"bureau-proxy-template":
            return child
    raise AssertionError(f"launcher {launcher_pid} has no proxy template")
