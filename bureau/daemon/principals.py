"""The daemon's side of running principals: a reconcile pass lists what the launcher runs,
plans (daemon/reconcile.py) and hands each principal's action to a task of its own. Each
principal stands alone: a start that hangs holds up no other principal, a stop never waits
behind another principal's start, and a refusal or a launcher that did not answer is that
principal's failure, retried on its own backoff and shown in machine_status. The
launcher orders requests for one principal; here one principal has one request in flight,
except that a stop is sent at once behind a start still in flight."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from bureau.daemon.launcher_client import LauncherClient, LauncherRefused, LauncherUnavailable
from bureau.daemon.reconcile import Action, Ensure, Failure, Stop, failed, is_due, plan, tried
from bureau.errors import InputError
from bureau.wire.credentials import content_digest, rfc3339_now
from bureau.wire.launcher_protocol import FleetCredentials, RelayedCredentials
from bureau.wire.machine_config import MachineConfig
from bureau.wire.names import InvalidName, PrincipalRef
from bureau.wire.sandbox_spec import SandboxSpec

# Starts in flight at once (each decrypts and forks a proxy in the launcher); stops are
# never counted against it.
MAX_STARTING = 8


def principal_ref(user_id: str) -> PrincipalRef:
    try:
        return PrincipalRef.from_user_id(user_id)
    except InvalidName as exc:
        raise InputError("principal", None, str(exc)) from None


def typed(
    action: Ensure,
) -> tuple[RelayedCredentials, SandboxSpec | None, FleetCredentials | None]:
    """What an ensure carries, read as the launcher reads it (InputError naming the
    field, in the launcher's words): the launcher is sent only what it can read."""
    credentials = RelayedCredentials.from_json(
        action.content, f"credentials for {action.principal}"
    )
    try:
        sandbox = None if action.sandbox is None else SandboxSpec.from_json(action.sandbox)
    except InputError as exc:
        raise InputError(f"sandbox for {action.principal}", None, str(exc)) from None
    fleet = None
    if action.fleet_credentials is not None:
        fleet = FleetCredentials.from_json(
            action.fleet_credentials, f"fleet_credentials for {action.principal}"
        )
    return credentials, sandbox, fleet


class Principals:
    def __init__(
        self,
        launcher: LauncherClient,
        log: Any,
        rng: Callable[[], float],
        on_done: Callable[[], None],
    ) -> None:
        """``on_done`` is called as each action ends, so that a new pass sees its result."""
        self._launcher = launcher
        self._log = log
        self._rng = rng
        self._on_done = on_done
        self._inflight: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._starting = asyncio.Semaphore(MAX_STARTING)
        self._changed = False
        self._trusted: str | None = None  # digest of the statements the launcher last took
        self.failures: dict[str, Failure] = {}  # principal -> its last action's failure
        self.running = 0
        self.last_activity_at: str | None = None  # RFC 3339: the last action that succeeded

    async def trust(self, statements: list[dict[str, Any]]) -> None:
        """Relay the operator key statements published in the fleet room; the launcher
        keeps those a key it trusts signed. Sent again only when they change (the launcher
        keeps what it applied in its state dir)."""
        digest = content_digest(statements)
        if not statements or digest == self._trusted:
            return  # none published (the pinned keys stand), or relayed already
        try:
            result = await self._launcher.trust(statements)
        except LauncherRefused as exc:
            self._log.warning("launcher refused the operator key statements", error=str(exc))
            return
        self._trusted = digest
        self._log.info("operator key statements relayed", trusted=list(result.keys))

    def next_retry(self) -> float | None:
        """When the earliest failed principal is due again (monotonic), if any."""
        return min((f.retry_at for f in self.failures.values()), default=None)

    async def reconcile(
        self,
        config: MachineConfig,
        credentials: dict[str, dict[str, Any]],
        *,
        settle: bool,
        specs: dict[str, dict[str, Any]] | None = None,
        held: set[str] | None = None,
        templates: dict[str, dict[str, dict[str, Any]]] | None = None,
        fleet: dict[str, dict[str, Any]] | None = None,
    ) -> bool:
        """One pass; True when what the heartbeat reports changed since the last one.
        ``settle`` waits for the actions it started (the first pass, before READY). A
        launcher that cannot even list raises LauncherUnavailable: the pass is retried."""
        listed = await self._launcher.list()
        self.running = sum(1 for p in listed if p.running)
        running = {p.principal.user_id: p.digest for p in listed}
        sandboxes = {p.principal.user_id: p.sandbox.digest for p in listed if p.sandbox is not None}
        actions = plan(
            config,
            credentials,
            running,
            specs=specs,
            sandboxes=sandboxes,
            held=held or set(),
            templates=templates,
            fleet=fleet,
        )
        pending = {action.principal for action in actions} | set(self._inflight)
        for principal in [p for p in self.failures if p not in pending]:
            del self.failures[principal]  # done elsewhere, or no longer wanted
            self._changed = True
        now = time.monotonic()
        for action in actions:
            busy = self._inflight.get(action.principal)
            if busy is not None and (busy[0] == tried(action) or not isinstance(action, Stop)):
                continue  # in hand; or a new start waits for the one in flight to end
            if is_due(self.failures.get(action.principal), action, now):
                task = asyncio.create_task(self._apply(action))
                self._inflight[action.principal] = (tried(action), task)
        if settle and self._inflight:
            await asyncio.gather(*(task for _, task in self._inflight.values()))
            self.running = sum(1 for p in await self._launcher.list() if p.running)
        changed, self._changed = self._changed, False
        return changed

    async def stop_all(self) -> None:
        """Stop every principal the launcher runs (the machine lost its standing)."""
        try:
            for item in await self._launcher.list():
                await self._launcher.stop(item.principal)
                self._log.info("principal stopped", principal=item.principal.user_id)
        except (LauncherUnavailable, LauncherRefused) as exc:
            self._log.error("could not stop every principal", error=str(exc))

    async def close(self) -> None:
        """Cancel what is in flight (the daemon is stopping); the launcher finishes or
        drops each request on its own."""
        tasks = [task for _, task in self._inflight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _apply(self, action: Action) -> None:
        starting = isinstance(action, Ensure)
        previous = self.failures.get(action.principal)
        try:
            principal = principal_ref(action.principal)
            if isinstance(action, Ensure):
                credentials, sandbox, fleet = typed(action)
                async with self._starting:
                    await self._launcher.ensure(
                        principal,
                        credentials,
                        sandbox,
                        action.assignment,
                        action.templates,
                        fleet=fleet,
                    )
            else:
                await self._launcher.stop(principal)
        except InputError as exc:
            # What the launcher would refuse, refused here: it is never sent.
            self._failed(action, previous, str(exc), refused=True)
        except (LauncherRefused, LauncherUnavailable) as exc:
            self._failed(action, previous, str(exc), refused=isinstance(exc, LauncherRefused))
        except Exception as exc:  # a task of its own: nobody else would see it
            self._failed(action, previous, type(exc).__name__, refused=False)
        else:
            self.failures.pop(action.principal, None)
            self._changed = True
            self.last_activity_at = rfc3339_now()
            self._log.info(
                "principal running" if starting else "principal stopped",
                principal=action.principal,
            )
        finally:
            mine = self._inflight.get(action.principal)
            if mine is not None and mine[1] is asyncio.current_task():
                del self._inflight[action.principal]
            self._on_done()

    def _failed(
        self, action: Action, previous: Failure | None, reason: str, *, refused: bool
    ) -> None:
        now = time.monotonic()
        failure = failed(previous, action, reason, refused=refused, now=now, rng=self._rng)
        self.failures[action.principal] = failure
        self._changed = self._changed or previous is None or previous.reason != failure.reason
        self._log.warning(
            "could not start a principal"
            if isinstance(action, Ensure)
            else "could not stop a principal",
            principal=action.principal,
            refused=refused,
            error=failure.reason,
            retry_in=round(failure.retry_at - now, 1),
        )
