"""The launcher's Unix socket: one JSON request and one JSON response per connection,
only from the launcher's own uid, root's or the daemon's (SO_PEERCRED). Lifecycle: adopt earlier
proxies, bind (0660), serve until SIGTERM, close the socket. Proxies keep running when
the launcher stops: the next launcher adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bureau import lifecycle
from bureau.errors import BureauError
from bureau.files import make_dirs
from bureau.launcher import relogin
from bureau.launcher.operator_trust import OperatorTrust
from bureau.launcher.proxy_kind import Unbound
from bureau.launcher.supervisor import LauncherError, SandboxOptions, Supervisor
from bureau.lifecycle import Owned
from bureau.notify import Notifier
from bureau.secret import Secret
from bureau.wire.launcher_protocol import (
    MAX_MESSAGE,
    Answer,
    EnsureRequest,
    LauncherStatus,
    Listing,
    ListRequest,
    ProtocolError,
    Refusal,
    ReloginRequest,
    ReloginResult,
    Request,
    StatusRequest,
    StopRequest,
    TrustRequest,
    encode_answer,
    parse_request,
)

SOCKET_NAME = "launcher.sock"
# An allowed peer (the daemon) sends its one line at once; one that does not is dropped.
REQUEST_READ_SECONDS = 10.0
# Refused peers are logged at most this often, with how many there were meanwhile.
REFUSAL_LOG_SECONDS = 10.0
# How long a refused peer's request is waited for, and how many such peers at most.
REFUSAL_GRACE_SECONDS = 0.5
MAX_HELD_REFUSALS = 16


# For requests under way when SIGTERM comes (a start waits for its proxy's READY).
STOP_GRACE_SECONDS = 10.0


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", raw)
    return int(uid)


def summary(status: LauncherStatus) -> str:
    return f"serving; {status.running} of {status.principals} principals running"


class LauncherServer:
    def __init__(
        self,
        supervisor: Supervisor,
        allowed_uids: set[int],
        log: Any,
        notifier: Notifier,
        relogin: Callable[[], bool],
        *,
        trust: OperatorTrust,
    ) -> None:
        self._supervisor = supervisor
        self._trust = trust
        self._allowed = allowed_uids
        self._log = log
        self._notifier = notifier
        self._relogin = relogin
        self._relogin_lock = asyncio.Lock()
        self._refusal_logged_at = -REFUSAL_LOG_SECONDS
        self._refused_since_log = 0
        self._held_refusals = 0
        self._last_refused_uid = -1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Every connection gets one answer, whatever its request does to the code below:
        an uncaught exception would close it unanswered, and the daemon would take the
        launcher for gone and retry the whole machine forever."""
        try:
            uid = peer_uid(writer)
            if uid not in self._allowed:
                await self._refuse(uid, reader, writer)
                return
            try:
                async with asyncio.timeout(REQUEST_READ_SECONDS):
                    line = await reader.readline()
            except ValueError:  # longer than the stream limit
                response: Answer | Refusal = Refusal(f"request larger than {MAX_MESSAGE} bytes")
            except TimeoutError:
                return  # an allowed peer that sent nothing: nobody to answer
            else:
                response = await self._answer(line)
            writer.write(encode_answer(response))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _refuse(
        self, uid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A peer of another uid gets its refusal at once. Its request is then read for a
        moment (a Unix socket closed with unread data resets the peer, which would not see
        the refusal), but only while few refused peers are held: a flood of them is closed
        at once and cannot use up the launcher's descriptors. Logged at most once per
        REFUSAL_LOG_SECONDS, with the count since."""
        writer.write(encode_answer(Refusal("permission denied")))
        self._refused_since_log += 1
        self._last_refused_uid = uid
        wait = self._refusal_logged_at + REFUSAL_LOG_SECONDS - time.monotonic()
        if wait <= 0:
            self._log_refusals()
        elif self._refused_since_log == 1:
            # The tail of a burst is reported when its window ends, not at the next one.
            asyncio.get_running_loop().call_later(wait, self._log_refusals)
        if self._held_refusals >= MAX_HELD_REFUSALS:
            return
        self._held_refusals += 1
        try:
            await writer.drain()
            with contextlib.suppress(ValueError, TimeoutError):
                async with asyncio.timeout(REFUSAL_GRACE_SECONDS):
                    await reader.readline()
        finally:
            self._held_refusals -= 1

    def _log_refusals(self) -> None:
        if self._refused_since_log:
            self._log.warning(
                "refused a connection", uid=self._last_refused_uid, refused=self._refused_since_log
            )
        self._refusal_logged_at, self._refused_since_log = time.monotonic(), 0

    async def _answer(self, line: bytes) -> Answer | Refusal:
        principal = None
        try:
            request = parse_request(line)
            if isinstance(request, EnsureRequest | StopRequest):
                principal = request.principal.user_id
            return await self._act(request)
        except (ProtocolError, LauncherError, BureauError) as exc:
            self._log.warning("request refused", principal=principal, error=str(exc))
            return Refusal(str(exc))
        except Exception as exc:  # answered, not raised: see handle()
            # Named by type and place only: an exception's text may quote what it choked
            # on, and that may be decrypted content.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._log.error(
                "request failed unexpectedly",
                principal=principal,
                exception=type(exc).__name__,
                at=f"{Path(where.filename).name}:{where.lineno}",
            )
            subject = f" for {principal}" if principal else ""
            return Refusal(f"the launcher failed{subject}: {type(exc).__name__}")

    async def _act(self, request: Request) -> Answer:
        answer: Answer
        match request:
            case StatusRequest():
                return self._supervisor.status()
            case ListRequest():
                return Listing(tuple(await self._supervisor.list()))
            case ReloginRequest():
                # One at a time: a second caller finds the session already renewed.
                async with self._relogin_lock:
                    renewed = await asyncio.to_thread(self._relogin)
                return ReloginResult(renewed)
            case TrustRequest(statements):
                return self._trust.apply(statements, self._log)
            case EnsureRequest(principal, credentials, sandbox):
                # Before anything changes: a refusal leaves what runs as it was.
                self._trust.check_ensure(request)
                answer = await self._supervisor.ensure(
                    principal, credentials, sandbox, request.fleet_credentials
                )
            case StopRequest(principal):
                answer = await self._supervisor.stop(principal)
        self._notifier.status(summary(self._supervisor.status()))
        return answer


async def serve(
    *,
    machine_user: str,
    secret_key: Secret,
    state_dir: Path,
    run_dir: Path,
    allowed_uids: set[int],
    log: Any,
    notifier: Notifier,
    sandboxes: SandboxOptions | None = None,
    unbound: Unbound | None = None,
    allow_unsigned: bool = False,
) -> None:
    make_dirs(run_dir, 0o755)
    path = run_dir / SOCKET_NAME
    supervisor: Supervisor | None = None
    server: asyncio.Server | None = None

    async def start(tasks: Owned) -> None:
        nonlocal supervisor, server
        supervisor = Supervisor(
            machine_user=machine_user,
            secret_key=secret_key,
            run_dir=run_dir,
            log=log,
            tasks=tasks,
            state_dir=state_dir,
            sandboxes=sandboxes or SandboxOptions(),
            unbound=unbound,
            reserved_uids=allowed_uids,
        )
        if supervisor.cgroups == "none":
            log.warning("no writable cgroup: sandboxes get pids and open-file limits only")
        await supervisor.adopt()
        handler = LauncherServer(
            supervisor,
            allowed_uids,
            log,
            notifier,
            partial(relogin.relogin, state_dir, secret_key, log),
            trust=OperatorTrust(state_dir, machine_user, allow_unsigned=allow_unsigned),
        ).handle
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from a launcher that died
        old_umask = os.umask(0o117)  # bound 0660 from the start
        try:
            server = await asyncio.start_unix_server(handler, path, limit=MAX_MESSAGE)
        finally:
            os.umask(old_umask)
        log.info("launcher serving", socket=str(path), allowed_uids=sorted(allowed_uids))
        notifier.ready(summary(supervisor.status()))
        tasks.create_task(notifier.watchdog())

    async def stopping() -> None:
        notifier.stopping("stopping; proxies keep running for the next launcher")
        log.info("stopping; proxies keep running for the next launcher")
        if server is not None:
            server.close()
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    try:
        # The children's watchers are cancelled after the grace: the children stay.
        await lifecycle.serve(
            start,
            stopping,
            grace=STOP_GRACE_SECONDS,
            on_grace_exceeded=lambda: log.warning("requests under way outlived the grace"),
        )
    finally:
        if supervisor is not None:
            supervisor.close()
