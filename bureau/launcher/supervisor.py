"""The launcher's principals: which principals this machine runs, and for each its
supervised children (launcher/children.py): its proxy (launcher/proxy_kind.py), started
from a credentials event and swapped without downtime when the credentials change; and,
when the daemon sends a sandbox spec, its sandbox (launcher/sandbox_kind.py), whose only
way out is that proxy. A rotation replaces the proxy only; a changed spec restarts the
workload only. Requests for one principal are serialised by its lock; principals never
wait for each other.

What the launcher keeps per principal is public (the event content, which is in Matrix,
and the spec), so that it can decrypt again to restart a proxy."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bureau.errors import InputError
from bureau.launcher import fleet_bundles, sandbox_policy
from bureau.launcher.cgroups import Cgroups
from bureau.launcher.children import Child, Children, LauncherError
from bureau.launcher.proxy_kind import ProxyKind, Unbound
from bureau.launcher.sandbox_broker import BrokerClient
from bureau.launcher.sandbox_host import SandboxHost
from bureau.launcher.sandbox_kind import Host, SandboxKind
from bureau.launcher.sandbox_uids import DEFAULT_RANGE, SandboxUids
from bureau.launcher.spawner import Spawner
from bureau.lifecycle import TaskOwner
from bureau.secret import Secret
from bureau.wire import names
from bureau.wire.credentials import content_digest, rfc3339_now
from bureau.wire.launcher_protocol import (
    EnsureResult,
    FleetCredentials,
    LauncherStatus,
    PrincipalState,
    RelayedCredentials,
    SandboxState,
    StopResult,
    running_digest,
)
from bureau.wire.sandbox_spec import SandboxSpec

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


@dataclass(frozen=True)
class SandboxOptions:
    """This machine's sandbox settings (bureau-launcher's flags)."""

    uids: tuple[int, int] = DEFAULT_RANGE
    directory: Path | None = None  # workspaces; default: bureau-sandbox beside the state dir
    host_network: bool = False
    protected: tuple[str, ...] = ()  # besides the state, run and sandbox dirs, /etc/bureau
    broker: Path | None = None  # bureau-sandboxd's socket: it hosts the sandboxes, not we


def sandbox_host(
    options: SandboxOptions,
    state_dir: Path,
    run_dir: Path,
    reserved: set[int],
    fleet: tuple[str, str],
) -> Host:
    """Where sandboxes start: bureau-sandboxd, or this process (which then needs the
    capabilities sandbox_host.py names). ``reserved``: uids no sandbox may run as;
    ``fleet``: (server name, fleet) of the principals that may run."""
    if options.broker is not None:
        return BrokerClient(options.broker)
    # The sandbox dir holds every workspace: none is a sandbox's to mount.
    workspaces = options.directory or state_dir.parent / "bureau-sandbox"
    protected = (str(state_dir), str(run_dir), str(workspaces), "/etc/bureau")
    return SandboxHost(
        sandbox_dir=workspaces,
        run_dir=run_dir,
        machine=sandbox_policy.Machine((*protected, *options.protected), options.host_network),
        uids=SandboxUids(state_dir, options.uids, reserved),
        cgroups=Cgroups(),
        fleet=fleet,
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
        tasks: TaskOwner,
        state_dir: Path,
        sandboxes: SandboxOptions,
        reserved_uids: set[int],
        unbound: Unbound | None = None,
    ) -> None:
        """``reserved_uids``: root's, the daemon's; no sandbox runs as one (nor as ours).
        ``unbound``: how to serve unbound credential bundles (--allow-unbound-bundles);
        None refuses them."""
        self._machine_user = machine_user
        machine = names.MachineRef.from_user_id(machine_user)
        self._server, self._fleet = machine.server, machine.fleet
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
            unbound=unbound,
        )
        self._proxies = Children(
            self._proxy_kind, run_dir / "launcher" / "proxies", log, tasks, self._lock
        )
        self._sandbox_kind = SandboxKind(
            host=sandbox_host(
                sandboxes,
                state_dir,
                run_dir,
                {os.getuid(), *reserved_uids},
                (self._server, self._fleet),
            ),
            run_dir=run_dir,
            spawner=self._spawner,
            credential_names=self._credential_names,
            log=log,
        )
        self._sandboxes = Children(
            self._sandbox_kind, run_dir / "launcher" / "sandboxes", log, tasks, self._lock
        )

    @property
    def cgroups(self) -> str:
        """How sandbox limits are enforced here: v2, v1, or none (rlimits only)."""
        return self._sandbox_kind.host.mode

    def _credential_names(self, principal: str) -> tuple[str, ...]:
        proxy = self._proxies.running.get(principal)
        return self._proxy_kind.describe(proxy.spec)[0] if proxy is not None else ()

    # -- requests ------------------------------------------------------------------------

    def close(self) -> None:
        """The template goes; the children stay for the next launcher to adopt."""
        self._spawner.close()

    def status(self) -> LauncherStatus:
        proxies = self._proxies.running.values()
        running = sum(1 for p in proxies if not p.exited.is_set())
        return LauncherStatus(self._machine_user, len(proxies), running)

    async def list(self) -> list[PrincipalState]:
        """Each principal's state, its sandbox's figures measured now (by the host, on
        worker threads, within FIGURES_WAIT; else as last measured)."""
        running = [c for c in self._sandboxes.running.values() if c.status == "running"]
        await self._sandbox_kind.measure(running)
        return [self._describe(self._proxies.running[p]) for p in sorted(self._proxies.running)]

    async def ensure(
        self,
        ref: names.PrincipalRef,
        credentials: RelayedCredentials,
        sandbox: SandboxSpec | None = None,
        fleet: FleetCredentials | None = None,
    ) -> EnsureResult:
        """Everything is checked before anything changes: a refused spec or event leaves
        what runs as it was. ``fleet``: the fleet bundle shard served beside the
        principal's own (operator_trust checked that its signed templates name it)."""
        self._check_principal(ref)
        principal = ref.user_id
        event = credentials.event
        self._proxy_kind.check(principal, event)
        keys = event.keys
        if fleet is not None:
            self._proxy_kind.check_fleet(principal, fleet)
            keys = (*keys, *fleet.event.keys)
        if sandbox is not None:
            await self._sandbox_kind.check(principal, sandbox, keys)
        socket = str(self._proxy_kind.socket_path(principal))
        spec = fleet_bundles.proxy_spec(credentials.to_json(), fleet)
        digest = running_digest(credentials.to_json(), None if fleet is None else fleet.to_json())
        async with self._lock(principal):
            changed = await self._ensure_proxy(principal, spec, digest, keys)
            changed = await self._ensure_sandbox(principal, sandbox) or changed
        return EnsureResult(changed=changed, socket=socket)

    async def _restart_proxy(self, principal: str, spec: dict[str, Any]) -> None:
        """A proxy that died with the launcher starts again from its recorded spec, read
        as an ensure would read it."""
        try:
            ref = names.PrincipalRef.from_user_id(principal)
            content, fleet = fleet_bundles.split_spec(principal, spec)
            credentials = RelayedCredentials.from_json(content, f"credentials for {principal}")
        except names.InvalidName as exc:
            raise LauncherError(f"principal: {exc}") from None
        except InputError as exc:
            raise LauncherError(str(exc)) from None
        await self.ensure(ref, credentials, None, fleet)

    async def _ensure_proxy(
        self, principal: str, content: dict[str, Any], digest: str, keys: tuple[str, ...]
    ) -> bool:
        current = self._proxies.running.get(principal)
        if current is not None and current.digest == digest and not current.exited.is_set():
            return False
        new = await self._proxies.start(principal, content, digest)
        # Before the old proxy drains: the workload's next connection reaches the new one.
        await self._sandbox_kind.relink(principal)
        if current is not None:
            new.restarts = current.restarts
            await self._proxies.retire(current)
        self._proxies.install(new)
        self._log.info(
            "proxy started" if current is None else "proxy replaced (credentials changed)",
            principal=principal,
            pid=new.pid,
            keys=list(keys),
        )
        return True

    async def _ensure_sandbox(self, principal: str, spec: SandboxSpec | None) -> bool:
        current = self._sandboxes.running.get(principal)
        if spec is None:
            if current is None:
                return False
            await self._sandboxes.remove(principal)
            self._log.info("sandbox stopped (no template assigned)", principal=principal)
            return True
        if current is not None and current.digest == spec.digest:
            return False
        if current is not None:
            await self._sandboxes.retire(current)
        new = await self._sandboxes.start(principal, spec.to_json(), spec.digest)
        self._sandboxes.install(new)
        self._log.info(
            "sandbox started" if current is None else "sandbox restarted (spec changed)",
            principal=principal,
            pid=new.pid,
            template=spec.template,
        )
        return True

    async def stop(self, ref: names.PrincipalRef) -> StopResult:
        # Any name of this fleet may be stopped: one that could never run is not running.
        self._check_principal(ref, to_run=False)
        principal = ref.user_id
        async with self._lock(principal):
            sandbox = await self._sandboxes.remove(principal)
            stopped = await self._proxies.remove(principal)
        if sandbox:
            self._log.info("sandbox stopped", principal=principal)
        if stopped:
            self._log.info("proxy stopped", principal=principal)
        return StopResult(stopped or sandbox)

    async def adopt(self) -> None:
        """Take over what an earlier launcher left running; start again what died."""
        await self._proxies.adopt(self._restart_proxy)
        await self._sandboxes.adopt(self._restart_sandbox)
        # A machine switched back to refusing unbound bundles serves none it adopted: the
        # workload goes first, then the proxy that was its way out.
        for principal, proxy in sorted(self._proxies.running.items()):
            refusal = self._proxy_kind.refusal(principal, proxy.spec)
            if refusal is not None:
                self._log.warning(
                    "stopping an adopted proxy this launcher would not start", error=refusal
                )
                await self._sandboxes.remove(principal)
                await self._proxies.remove(principal)
        # Nor does a workload run on whose proxy it could not start again (refused, say,
        # as an unbound bundle): its way out would be a dead socket.
        for principal in sorted(set(self._sandboxes.running) - set(self._proxies.running)):
            self._log.warning(
                "stopping an adopted sandbox whose proxy is not running", principal=principal
            )
            await self._sandboxes.remove(principal)

    async def _restart_sandbox(self, principal: str, spec: dict[str, Any]) -> None:
        """A sandbox that died with the launcher starts again if its proxy runs."""
        if principal not in self._proxies.running:
            raise LauncherError(f"sandbox for {principal}: its proxy is not running")
        async with self._lock(principal):
            self._sandboxes.install(
                await self._sandboxes.start(principal, spec, content_digest(spec))
            )

    # -- principals ----------------------------------------------------------------------

    def _lock(self, principal: str) -> asyncio.Lock:
        return self._locks.setdefault(principal, asyncio.Lock())

    def _check_principal(self, principal: names.PrincipalRef, *, to_run: bool = True) -> None:
        """Refuses what is not a principal of this fleet, and (``to_run``) a name that
        could never have a proxy socket of its own."""
        try:
            principal.check_fleet(self._server, self._fleet, to_run=to_run)
        except names.InvalidName as exc:
            raise LauncherError(f"principal: {exc}") from None

    def _sandbox_state(self, principal: str) -> SandboxState | None:
        child = self._sandboxes.running.get(principal)
        if child is None:
            return None
        running = child.status == "running"
        pid, memory, cpu = self._sandbox_kind.workload(child) if running else (0, 0, 0.0)
        return SandboxState(
            status=child.status,
            pid=pid,
            digest=child.digest,
            template=str(child.spec.get("template", "")),
            restarts=child.restarts,
            last_exit=child.last_exit,
            memory_mb=round(memory / (1 << 20), 1),
            cpu_seconds=round(cpu, 2),
        )

    def _describe(self, proxy: Child) -> PrincipalState:
        keys, services = self._proxy_kind.describe(proxy.spec)
        return PrincipalState(
            principal=names.PrincipalRef.from_user_id(proxy.principal),
            pid=proxy.pid,
            socket=str(self._proxy_kind.socket_path(proxy.principal)),
            digest=proxy.digest,
            keys=keys,
            services=services,
            started_at=rfc3339_from(proxy.started_at),
            restarts=proxy.restarts,
            status=proxy.status,
            sandbox=self._sandbox_state(proxy.principal),
        )
