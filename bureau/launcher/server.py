"""The launcher's Unix socket: one JSON request and one JSON response per connection,
only from the launcher's own uid or the daemon's (SO_PEERCRED). Lifecycle: adopt earlier
proxies, bind (0660), serve until SIGTERM, close the socket. Proxies keep running when
the launcher stops: the next launcher adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bureau.errors import BureauError
from bureau.files import make_dirs
from bureau.launcher import relogin
from bureau.launcher.protocol import (
    MAX_MESSAGE,
    ProtocolError,
    encode_response,
    failure,
    ok,
    parse_request,
)
from bureau.launcher.supervisor import LauncherError, Supervisor
from bureau.notify import Notifier
from bureau.secret import Secret

SOCKET_NAME = "launcher.sock"
REFUSAL_READ_SECONDS = 5.0


class _Stopped(Exception):
    pass


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", raw)
    return int(uid)


def summary(status: dict[str, Any]) -> str:
    return f"serving; {status['running']} of {status['principals']} principals running"


class LauncherServer:
    def __init__(
        self,
        supervisor: Supervisor,
        allowed_uids: set[int],
        log: Any,
        notifier: Notifier,
        relogin: Callable[[], bool],
    ) -> None:
        self._supervisor = supervisor
        self._allowed = allowed_uids
        self._log = log
        self._notifier = notifier
        self._relogin = relogin
        self._relogin_lock = asyncio.Lock()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = peer_uid(writer)
            if uid not in self._allowed:
                self._log.warning("refused a connection", uid=uid)
                response = failure("permission denied")
                # Read (and ignore) the request first: a Unix socket closed with unread
                # data resets the peer, which would then never see the refusal.
                with contextlib.suppress(ValueError, TimeoutError):
                    async with asyncio.timeout(REFUSAL_READ_SECONDS):
                        await reader.readline()
            else:
                response = await self._answer(reader)
            writer.write(encode_response(response))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await reader.readline()
        except ValueError:  # longer than the stream limit
            return failure(f"request larger than {MAX_MESSAGE} bytes")
        try:
            request = parse_request(line)
            if request.action == "status":
                return ok(**self._supervisor.status())
            if request.action == "list":
                return ok(principals=self._supervisor.list())
            if request.action == "relogin":
                # One at a time: a second caller finds the session already renewed.
                async with self._relogin_lock:
                    renewed = await asyncio.to_thread(self._relogin)
                return ok(renewed=renewed)
            # parse_request guarantees a principal for both, and credentials for ensure.
            principal = str(request.principal)
            if request.action == "ensure":
                result = await self._supervisor.ensure(principal, request.credentials or {})
            else:
                result = await self._supervisor.stop(principal)
            self._notifier.status(summary(self._supervisor.status()))
            return ok(**result)
        except (ProtocolError, LauncherError, BureauError) as exc:
            self._log.warning("request refused", error=str(exc))
            return failure(str(exc))


async def serve(
    *,
    machine_user: str,
    secret_key: Secret,
    state_dir: Path,
    run_dir: Path,
    allowed_uids: set[int],
    log: Any,
    notifier: Notifier,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    make_dirs(run_dir, 0o755)
    path = run_dir / SOCKET_NAME
    supervisor: Supervisor | None = None
    try:
        async with asyncio.TaskGroup() as tasks:
            supervisor = Supervisor(
                machine_user=machine_user,
                secret_key=secret_key,
                run_dir=run_dir,
                log=log,
                tasks=tasks,
            )
            await supervisor.adopt()
            handler = LauncherServer(
                supervisor,
                allowed_uids,
                log,
                notifier,
                partial(relogin.relogin, state_dir, secret_key, log),
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
            await stop.wait()
            notifier.stopping("stopping; proxies keep running for the next launcher")
            log.info("stopping; proxies keep running for the next launcher")
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise _Stopped  # cancels the watchers still in the group
    except* _Stopped:
        pass
    finally:
        if supervisor is not None:
            supervisor.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
