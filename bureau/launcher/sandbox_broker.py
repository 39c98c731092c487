"""The launcher's side of bureau-sandboxd (--sandbox-broker): each SandboxHost operation
as one request over the broker's socket (bureau/wire/sandbox_broker.py). A broker that is
down or slow makes the operation fail with a line saying so; the launcher's caller retries
as it would any failed start."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from bureau.launcher.children import LauncherError
from bureau.wire.sandbox_broker import Reply, Request, WireError, receive, send
from bureau.wire.sandbox_spec import SandboxSpec

# A quick request's bound, each of connect, send and receive: some are made from the
# launcher's event loop (stopping, adopting), which must not wait long on a stuck broker.
TIMEOUT = 2.0
# start waits for bwrap to set up the sandbox; finish for its processes to be gone. Both
# are asked from worker threads.
SLOW_TIMEOUT = 60.0


class BrokerClient:
    def __init__(self, path: Path) -> None:
        self._path = path

    def _ask(self, request: Request, timeout: float = TIMEOUT) -> tuple[Reply, list[int]]:
        fds: list[int] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
                s.settimeout(timeout)
                s.connect(str(self._path))
                send(s, request.to_json())
                raw, fds = receive(s, max_fds=1)
                reply = Reply.from_json(raw)
        except (OSError, WireError) as exc:
            for fd in fds:
                os.close(fd)
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LauncherError(
                f"sandbox broker {self._path}: {what or type(exc).__name__} "
                "(is bureau-sandboxd running?)"
            ) from None
        if reply.error:
            for fd in fds:
                os.close(fd)
            raise LauncherError(reply.error)
        return reply, fds

    @property
    def mode(self) -> str:
        try:
            return self._ask(Request("hello"))[0].mode
        except LauncherError:
            return "unknown (no broker)"

    def known(self, principal: str) -> bool:
        return self._ask(Request("known", principal))[0].known

    def check(self, principal: str, spec: SandboxSpec, credentials: Sequence[str]) -> None:
        self._ask(Request("check", principal, spec=spec, names=tuple(credentials)))

    def start(
        self, principal: str, spec: SandboxSpec, credentials: Sequence[str]
    ) -> tuple[int, int]:
        request = Request("start", principal, spec=spec, names=tuple(credentials))
        reply, fds = self._ask(request, SLOW_TIMEOUT)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(LauncherError):
                self.kill(principal, reply.pid)
            raise LauncherError(f"sandbox broker {self._path}: no output pipe for {principal}")
        return reply.pid, fds[0]

    def relink(self, principal: str) -> None:
        self._ask(Request("relink", principal))

    def finish(self, principal: str, keeper: int, *, reaped: bool) -> str | None:
        request = Request("finish", principal, keeper=keeper, reaped=reaped)
        return self._ask(request, SLOW_TIMEOUT)[0].how

    def terminate(self, principal: str, keeper: int) -> None:
        self._ask(Request("terminate", principal, keeper=keeper))

    def kill(self, principal: str, keeper: int) -> None:
        self._ask(Request("kill", principal, keeper=keeper))

    def removed(self, principal: str) -> None:
        self._ask(Request("removed", principal))

    def sweep(self, adopted: set[int]) -> list[str]:
        request = Request("sweep", adopted=tuple(sorted(adopted)))
        return list(self._ask(request)[0].killed)

    def workload(self, principal: str, keeper: int) -> tuple[int, int, float]:
        reply = self._ask(Request("workload", principal, keeper=keeper))[0]
        return reply.pid, reply.memory, reply.cpu
