"""The launcher's principals: which principals this machine runs, and for each its
supervised children (launcher/children.py). Today each principal has one child, its proxy
(launcher/proxy_kind.py): started from a credentials event, swapped without downtime when
the credentials change, stopped when the daemon asks. Requests for one principal are
serialised by its lock; principals never wait for each other.

What the launcher keeps per principal is the event content (public: it is in Matrix), so
that it can decrypt again to restart a proxy."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bureau import names
from bureau.credentials_event import content_digest, rfc3339_now
from bureau.launcher.children import Child, Children, LauncherError
from bureau.launcher.protocol import EnsureResult, LauncherStatus, PrincipalState, StopResult
from bureau.launcher.proxy_kind import ProxyKind
from bureau.launcher.spawner import Spawner
from bureau.secret import Secret

__all__ = ["LauncherError", "Supervisor"]

# What a proxy inherits: no notify socket, no credentials directory, nothing else. The
# journal variables let its logs reach the journal with their fields.
_CHILD_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "BUREAU_LOG_LEVEL",
    "JOURNAL_STREAM",
    "BUREAU_JOURNAL_SOCKET",
)


def rfc3339_from(epoch: float) -> str:
    return rfc3339_now(datetime.fromtimestamp(epoch, UTC))


class Supervisor:
    def __init__(
        self,
        *,
        machine_user: str,
        secret_key: Secret,
        run_dir: Path,
        log: Any,
        tasks: asyncio.TaskGroup,
    ) -> None:
        self._machine_user = machine_user
        machine_localpart, self._server = names.parse_user_id(machine_user)
        self._fleet = names.fleet_of_entity(machine_localpart)
        self._log = log
        env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV}
        self._spawner = Spawner(env)
        self._spawner.start()
        self._locks: dict[str, asyncio.Lock] = {}
        self._proxy_kind = ProxyKind(
            machine_user=machine_user,
            secret_key=secret_key,
            run_dir=run_dir,
            spawner=self._spawner,
            log=log,
        )
        self._proxies = Children(
            self._proxy_kind, run_dir / "launcher" / "proxies", log, tasks, self._lock
        )

    # -- requests ------------------------------------------------------------------------

    def close(self) -> None:
        """The template goes; the children stay for the next launcher to adopt."""
        self._spawner.close()

    def status(self) -> LauncherStatus:
        proxies = self._proxies.running.values()
        running = sum(1 for p in proxies if not p.exited.is_set())
        return LauncherStatus(self._machine_user, len(proxies), running)

    def list(self) -> list[PrincipalState]:
        return [self._describe(self._proxies.running[p]) for p in sorted(self._proxies.running)]

    async def ensure(self, principal: str, content: dict[str, Any]) -> EnsureResult:
        self._check_principal(principal)
        event = self._proxy_kind.check_event(principal, content)
        digest = content_digest(content)
        socket = str(self._proxy_kind.socket_path(principal))
        async with self._lock(principal):
            current = self._proxies.running.get(principal)
            if current is not None and current.digest == digest and not current.exited.is_set():
                return EnsureResult(changed=False, socket=socket)
            new = await self._proxies.start(principal, content, digest)
            if current is not None:
                new.restarts = current.restarts
                await self._proxies.retire(current)
            self._proxies.install(new)
        self._log.info(
            "proxy started" if current is None else "proxy replaced (credentials changed)",
            principal=principal,
            pid=new.pid,
            keys=list(event.keys),
        )
        return EnsureResult(changed=True, socket=socket)

    async def stop(self, principal: str) -> StopResult:
        # Any name of this fleet may be stopped: one that could never run is not running.
        self._check_principal(principal, to_run=False)
        async with self._lock(principal):
            stopped = await self._proxies.remove(principal)
        if stopped:
            self._log.info("proxy stopped", principal=principal)
        return StopResult(stopped)

    async def adopt(self) -> None:
        """Take over what an earlier launcher left running; start again what died."""
        await self._proxies.adopt(self.ensure)

    # -- principals ----------------------------------------------------------------------

    def _lock(self, principal: str) -> asyncio.Lock:
        return self._locks.setdefault(principal, asyncio.Lock())

    def _check_principal(self, principal: str, *, to_run: bool = True) -> None:
        """Refuses what is not a principal of this fleet, and (``to_run``) a name that
        could never have a proxy socket of its own."""
        try:
            localpart, server = names.parse_user_id(principal)
            names.validate_localpart(localpart)
            fleet = names.fleet_of_entity(localpart)
            if to_run:
                names.check_socket_name(localpart)
        except names.InvalidName as exc:
            raise LauncherError(f"principal: {exc}") from None
        if server != self._server or fleet != self._fleet:
            raise LauncherError(f"principal {principal} is not in this machine's fleet")
        if localpart.split("/")[3] == "machine":
            raise LauncherError(f"principal {principal} is a machine")

    def _describe(self, proxy: Child) -> PrincipalState:
        keys, services = self._proxy_kind.describe(proxy.spec)
        return PrincipalState(
            principal=proxy.principal,
            pid=proxy.pid,
            socket=str(self._proxy_kind.socket_path(proxy.principal)),
            digest=proxy.digest,
            keys=keys,
            services=services,
            started_at=rfc3339_from(proxy.started_at),
            restarts=proxy.restarts,
            status=proxy.status,
        )
