"""Starting proxies: ask the proxy template (bureau.proxy.template, a process that has
imported the proxy once) to fork one, with the two pipes the launcher talks to it over.

The template runs with the same stripped environment the proxies get, holds no secret,
and is restarted when it has died. Its forks are orphaned at once and, because the
launcher is a child subreaper, become the launcher's children: their exit status is
collected here as a Popen child's would be.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading

from bureau.hardening import become_subreaper

REPLY_TIMEOUT = 20.0
TITLE_ROOM = 320


class SpawnError(Exception):
    """The template could not start a proxy; the message holds no secret."""


class Spawned:
    """A proxy just forked: its pid, the write end of its stdin, the read end of its
    stdout."""

    def __init__(self, pid: int, stdin: int, stdout: int) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout


class Spawner:
    def __init__(self, env: dict[str, str], command: list[str] | None = None) -> None:
        self._env = env
        self._command = command or [sys.executable, "-m", "bureau.proxy.template"]
        self._lock = threading.Lock()
        self._template: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        become_subreaper()

    def start(self) -> None:
        """Start the template now, so that it has imported the proxy by the time the
        first principal needs one."""
        with self._lock:
            self._ensure_template()

    def spawn(self, argv: list[str], stdin: int | None = None) -> Spawned:
        """Blocking: call from a worker thread. A template that has died is started again
        and asked once more. ``stdin``: the child's stdin instead of a new pipe (closed
        here either way; Spawned.stdin is then -1)."""
        try:
            with self._lock:
                try:
                    return self._ask(self._ensure_template(), argv, stdin)
                except (OSError, ValueError):
                    self._stop_template()
                try:
                    return self._ask(self._ensure_template(), argv, stdin)
                except (OSError, ValueError) as exc:
                    self._stop_template()
                    raise SpawnError(f"proxy template failed: {exc}") from None
        finally:
            if stdin is not None:
                os.close(stdin)

    def close(self) -> None:
        with self._lock:
            self._stop_template()

    def _ensure_template(self) -> socket.socket:
        if self._template is not None and self._template.poll() is None and self._control:
            return self._control
        self._stop_template()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fd = theirs.fileno()
            self._template = subprocess.Popen(
                # The blank argument is room in the command line for each proxy's title:
                # "bureau-proxy --socket PATH --machine ID", as ps shows it.
                [*self._command, "--control-fd", str(fd), " " * TITLE_ROOM],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=self._env,
                pass_fds=(fd,),
                start_new_session=True,
            )
        finally:
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT)
        self._control = ours
        return ours

    def _ask(self, control: socket.socket, argv: list[str], given: int | None) -> Spawned:
        if given is None:
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        else:
            stdin_r, stdin_w = os.dup(given), -1
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        pid = None
        try:
            fds = array.array("i", [stdin_r, stdout_w])
            message = json.dumps({"argv": argv}).encode()
            control.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            reply = json.loads(control.recv(4096) or b"null")
            if not isinstance(reply, dict):
                raise ValueError("no answer")
            if "pid" not in reply:
                raise SpawnError(str(reply.get("error", "unknown failure")))
            pid = int(reply["pid"])
        finally:
            # The proxy's ends are the template's (now the proxy's); ours stay only for a
            # proxy that exists.
            os.close(stdin_r)
            os.close(stdout_w)
            if pid is None:
                if stdin_w >= 0:
                    os.close(stdin_w)
                os.close(stdout_r)
        return Spawned(pid, stdin_w, stdout_r)

    def _stop_template(self) -> None:
        if self._control is not None:
            self._control.close()  # the template exits on EOF
            self._control = None
        if self._template is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._template.wait(timeout=5)
            if self._template.poll() is None:
                self._template.kill()
                self._template.wait()
            self._template = None
