"""The daemon's side of the launcher socket: one request, one response, per connection.

Before it sends anything (an ``ensure`` carries a principal's credentials event) it asks
the kernel who is listening (SO_PEERCRED): only a launcher of a trusted uid is talked to.
Trusted is files.trusted_owners(): the daemon's own uid, as in the packaged units where
both run as ``bureau``, or root (a first boot's, or a launcher run by hand); for a root
daemon, the ``bureau`` account too. Anyone else answering there bound the socket in a run
dir they could write to."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any, TypeVar

from bureau.errors import BureauError
from bureau.files import trusted_owners
from bureau.wire.launcher_protocol import (
    Answer,
    EnsureRequest,
    EnsureResult,
    FleetCredentials,
    Listing,
    ListRequest,
    PrincipalState,
    ProtocolError,
    Refusal,
    RelayedCredentials,
    ReloginRequest,
    ReloginResult,
    Request,
    StopRequest,
    StopResult,
    TrustRequest,
    TrustResult,
    read_answer,
)
from bureau.wire.names import PrincipalRef
from bureau.wire.sandbox_spec import SandboxSpec

A = TypeVar("A", bound=Answer)
TIMEOUT = 60.0  # an ensure waits for a proxy to start
# Answers are the launcher's (trusted once SO_PEERCRED says so); a list of many principals
# is larger than any request.
MAX_ANSWER = 16 << 20


class LauncherUnavailable(BureauError):
    pass


class LauncherRefused(BureauError):
    pass


class LauncherImpostor(LauncherUnavailable):
    """Someone other than a trusted launcher answers on the launcher socket: retried like
    an absent launcher (the real one may bind again), and never sent a request."""


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", raw)
    return int(pid), int(uid)


def check_peer(sock: socket.socket, path: Path, owners: Collection[int]) -> None:
    pid, uid = peer_credentials(sock)
    if uid not in owners:
        raise LauncherImpostor(
            f"{path} is answered by uid {uid} (pid {pid}), which is not a trusted launcher "
            f"(uids {', '.join(map(str, sorted(owners)))}); nothing sent to it: someone "
            f"else can write to {path.parent} (bureau machine doctor --fix repairs that)"
        )


class LauncherClient:
    def __init__(self, socket_path: Path, owners: Collection[int] | None = None) -> None:
        self.socket_path = socket_path
        self._owners = trusted_owners() if owners is None else owners

    async def call(self, request: Request, read: Callable[[dict[str, Any]], A]) -> A:
        """``request``'s answer, as ``read`` reads it. A refusal is LauncherRefused; no
        answer, or one in a shape this daemon does not know, LauncherUnavailable (retried
        like no answer)."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_ANSWER)
        except OSError as exc:
            raise LauncherUnavailable(
                f"launcher socket {self.socket_path}: {exc.strerror or exc}"
            ) from None
        try:
            check_peer(writer.get_extra_info("socket"), self.socket_path, self._owners)
            writer.write(request.to_line())
            await writer.drain()
            async with asyncio.timeout(TIMEOUT):
                line = await reader.readline()
        except (OSError, TimeoutError) as exc:
            raise LauncherUnavailable(f"launcher did not answer: {type(exc).__name__}") from None
        except ValueError:  # past the stream's limit
            raise LauncherUnavailable(f"launcher answered more than {MAX_ANSWER} bytes") from None
        finally:
            writer.close()
        try:
            answer = read_answer(line, read)
        except ProtocolError as exc:
            raise LauncherUnavailable(f"launcher answered in an unknown shape: {exc}") from None
        if isinstance(answer, Refusal):
            raise LauncherRefused(answer.error)
        return answer

    async def list(self) -> list[PrincipalState]:
        """What runs. A launcher that will not say is as good as absent for the caller,
        which backs off and asks again (LauncherUnavailable), never gives up."""
        try:
            listing = await self.call(ListRequest(), Listing.from_json)
        except LauncherRefused as exc:
            raise LauncherUnavailable(f"launcher refused to list its principals: {exc}") from None
        return list(listing.principals)

    async def ensure(  # noqa: PLR0917 -- the request's fields, in its order
        self,
        principal: PrincipalRef,
        credentials: RelayedCredentials,
        sandbox: SandboxSpec | None = None,
        assignment: dict[str, Any] | None = None,
        templates: dict[str, dict[str, Any]] | None = None,
        fleet: FleetCredentials | None = None,
    ) -> EnsureResult:
        request = EnsureRequest(principal, credentials, sandbox, assignment, templates or {}, fleet)
        return await self.call(request, EnsureResult.from_json)

    async def trust(self, statements: Iterable[dict[str, Any]]) -> TrustResult:
        return await self.call(TrustRequest(tuple(statements)), TrustResult.from_json)

    async def stop(self, principal: PrincipalRef) -> StopResult:
        return await self.call(StopRequest(principal), StopResult.from_json)

    async def relogin(self) -> bool:
        """Ask the launcher to log the machine in again (after a soft logout); True when
        it did, False when the session still worked."""
        return (await self.call(ReloginRequest(), ReloginResult.from_json)).renewed
