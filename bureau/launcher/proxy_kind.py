"""A principal's proxy as one kind of supervised child: check the credentials event (and
the fleet bundle its template names, launcher/fleet_bundles.py), decrypt them, start
``bureau-proxy`` from the template with the plaintext on its stdin, and put its socket in
place.

Plaintext exists only between decryption and the write to the new proxy's stdin. Socket
paths belong to the launcher: a proxy binds a fresh temporary path, and once it answers
"READY" the launcher renames that path over the principal's, so a client connecting at any
moment reaches an old or a new proxy, never nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau import age_keys
from bureau.errors import InputError
from bureau.files import make_dirs
from bureau.launcher import fleet_bundles
from bureau.launcher.children import DRAIN_TIMEOUT, Child, LauncherError
from bureau.launcher.processes import deliver, ready_line, reap, titled_under
from bureau.launcher.spawner import Spawner, SpawnError
from bureau.secret import Secret
from bureau.wire import names
from bureau.wire.credentials import (
    UNBOUND_REFUSED,
    CredentialsEvent,
    open_plaintext,
    parse_rfc3339,
    unbound_services,
)
from bureau.wire.launcher_protocol import FleetCredentials
from bureau.wire.proxy_payload import ProxyPayload
from bureau.wire.service_route import referenced_credentials

READY_TIMEOUT = 20.0


@dataclass(frozen=True)
class Unbound:
    """How this machine serves unbound bundles (--allow-unbound-bundles)."""

    homeserver_url: str  # the built-in matrix route's, from the machine's own session


SUN_PATH_MAX = 107
TEMPORARY_GLOB = ".*.proxy.sock.*"


class ProxyKind:
    name = "proxy"
    grace = DRAIN_TIMEOUT

    def __init__(
        self,
        *,
        machine_user: str,
        secret_key: Secret,
        run_dir: Path,
        spawner: Spawner,
        log: Any,
        unbound: Unbound | None = None,
    ) -> None:
        """``unbound``: this machine serves bundles without a binding (upstream's), with
        the built-in matrix route to its own homeserver; None: it refuses them."""
        self._log = log
        self._machine_user = machine_user
        self._key = secret_key
        # Upstream's daemon names a bundle it re-encrypts by the key's public half
        # (cmd/bureau-daemon/admin.go credentialRecipientKeys), ours by the machine.
        self._names = {machine_user, age_keys.public_key_of(secret_key, "the machine key")}
        self._run_dir = run_dir
        self._spawner = spawner
        self._unbound = unbound

    def socket_path(self, principal: str) -> Path:
        ref = names.PrincipalRef.from_user_id(principal)
        return self._run_dir / ref.proxy_socket_relpath

    def check_spec(
        self, principal: str, spec: dict[str, Any]
    ) -> tuple[CredentialsEvent, FleetCredentials | None]:
        """A recorded spec (fleet_bundles.proxy_spec), read and checked as at its ensure."""
        content, fleet = fleet_bundles.split_spec(principal, spec)
        try:
            event = CredentialsEvent.from_json(content, f"credentials for {principal}")
        except InputError as exc:
            raise LauncherError(str(exc)) from None
        self.check(principal, event)
        if fleet is not None:
            self.check_fleet(principal, fleet)
        return event, fleet

    def check_fleet(self, principal: str, fleet: FleetCredentials) -> None:
        """Whether this machine serves ``fleet`` (whose signature and name operator_trust
        checked) beside ``principal``'s own bundle."""
        fleet_bundles.check(principal, fleet, self._names)

    def check(self, principal: str, event: CredentialsEvent) -> None:
        """Whether this machine serves ``event`` as ``principal``'s (a user ID's) own."""
        if not event.principal:
            raise LauncherError(
                f'credentials for {principal}: principal: "" (a fleet bundle) is no '
                "principal's own bundle"
            )
        if event.principal != principal:
            raise LauncherError(f"credentials are for {event.principal}, not {principal}")
        if not self._names.intersection(event.encrypted_for):
            raise LauncherError(f"credentials for {principal} are not encrypted for this machine")
        if event.expires_at and parse_rfc3339(event.expires_at).timestamp() <= time.time():
            raise LauncherError(f"credentials for {principal} expired at {event.expires_at}")

    def _decrypt(self, ciphertext: bytes, where: str) -> bytes:
        try:
            return age_keys.decrypt(ciphertext, self._key)
        except age_keys.DecryptFailed as exc:
            raise LauncherError(f"{where}: {exc}") from None

    def _payload(
        self, principal: str, event: CredentialsEvent, fleet: FleetCredentials | None
    ) -> bytes:
        """Decrypt and build the proxy's payload; the plaintext lives only in here."""
        where = f"credentials for {principal}"
        plaintext = self._decrypt(event.ciphertext, where)
        try:
            opened = open_plaintext(
                plaintext, event, where, unbound_allowed=self._unbound is not None
            )
            services = event.services
            if not opened.bound and self._unbound is not None:
                services = unbound_services(
                    services, opened.credentials, self._unbound.homeserver_url, where
                )
        except InputError as exc:
            raise LauncherError(str(exc)) from None
        finally:
            del plaintext
        credentials, expires_at = opened.credentials, event.expires_at
        if fleet is not None:
            shared = self._decrypt(fleet.event.ciphertext, fleet_bundles.where(principal, fleet))
            try:
                theirs = fleet_bundles.opened(
                    principal, fleet, shared, unbound_allowed=self._unbound is not None
                )
            finally:
                del shared
            credentials, services = fleet_bundles.merged(
                principal,
                fleet,
                (credentials, services),
                (theirs.credentials, fleet.event.services),
            )
            expires_at = fleet_bundles.expiry(expires_at, fleet.event.expires_at)
        # Refused at provision, and again here: a route naming a credential the bundle
        # (with its fleet bundle) lacks would only ever answer 503.
        missing = sorted(referenced_credentials(services) - set(credentials))
        if missing:
            lacks = "the bundle lacks" if fleet is None else "neither bundle holds"
            raise LauncherError(f"{where}: its services name {', '.join(missing)}, which {lacks}")
        if not opened.bound:
            self._log.info("serving an unbound bundle", principal=principal)
        payload = ProxyPayload(principal, services, credentials, expires_at)
        return payload.to_bytes()

    def refusal(self, principal: str, spec: dict[str, Any]) -> str | None:
        """Why this launcher would not serve the proxy it adopted for ``spec``: an unbound
        bundle that another launcher (run with --allow-unbound-bundles) started, when this
        one refuses them. Anything else wrong with it was refused when it started."""
        if self._unbound is not None:
            return None
        where = f"credentials for {principal}"
        try:
            event = CredentialsEvent.from_json(fleet_bundles.split_spec(principal, spec)[0], where)
            plaintext = age_keys.decrypt(event.ciphertext, self._key)
            try:
                bound = open_plaintext(plaintext, event, where, unbound_allowed=True).bound
            finally:
                del plaintext
        except (InputError, LauncherError, age_keys.DecryptFailed):
            return None
        if bound:
            return None
        return f"{where}: {UNBOUND_REFUSED}"

    async def launch(self, principal: str, spec: dict[str, Any]) -> int:
        event, fleet = self.check_spec(principal, spec)
        final = self.socket_path(principal)
        # The temporary name adds 10 bytes; sun_path holds 107 and a NUL.
        if len(os.fsencode(final)) + 10 > SUN_PATH_MAX:
            raise LauncherError(
                f"socket path {final} is too long for a Unix socket; use a shorter --run-dir"
            )
        try:
            make_dirs(final.parent, 0o755)
        except OSError as exc:
            raise LauncherError(
                f"proxy socket directory for {principal}: {exc.strerror or type(exc).__name__}"
                f" ({exc.filename})"
            ) from None
        payload = self._payload(principal, event, fleet)
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}")
        # Forked by the template in its own session (a signal to the launcher's group must
        # not reach it) and outliving this launcher, to be adopted by the next one.
        argv = ["--socket", str(temp), "--machine", self._machine_user]
        argv += ["--installed-as", str(final)]  # it watches that its socket is still there
        try:
            spawned = await asyncio.to_thread(self._spawner.spawn, argv)
        except SpawnError as exc:
            raise LauncherError(f"proxy for {principal}: {exc}") from None
        pid = spawned.pid
        reaped = None
        try:
            await asyncio.to_thread(deliver, spawned.stdin, payload)
            del payload
            async with asyncio.timeout(READY_TIMEOUT):
                line = await asyncio.to_thread(ready_line, spawned.stdout)
            if not line.startswith(b"READY"):
                reaped = await asyncio.to_thread(reap, pid)
                raise LauncherError(f"proxy for {principal} exited with {reaped} at start")
            temp.rename(final)
        except BaseException:
            if reaped is None:  # once reaped, the pid may already be someone else's
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await asyncio.to_thread(reap, pid)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        return pid

    def should_restart(self, spec: dict[str, Any], how: str) -> bool:
        del spec, how
        return True  # a principal's only way out is always served

    def terminate(self, child: Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)  # stops accepting, drains

    def kill(self, child: Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    def adoptable(self, principal: str) -> None:
        self.socket_path(principal)  # refuses a name that can no longer run

    def removed(self, principal: str) -> None:
        with contextlib.suppress(FileNotFoundError, names.InvalidName):
            self.socket_path(principal).unlink()

    def sweep(self, adopted: set[int]) -> None:
        """A proxy an earlier launcher was still starting when it died (killed between
        spawning and installing it) was never reachable: it is stopped, and its temporary
        socket removed (a temporary socket is renamed away once its proxy is installed)."""
        for pid in titled_under(b"bureau-proxy", b"--socket", self._run_dir):
            if pid not in adopted:
                self._log.warning("stopping a proxy that was never installed", pid=pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        proxies = self._run_dir / "fleet"
        if proxies.is_dir():
            for path in proxies.rglob(TEMPORARY_GLOB):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    @staticmethod
    def describe(spec: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What ``list`` shows of a proxy's spec (its credential names and services, its
        fleet bundle's included): names, never values; the spec was checked when the proxy
        started."""
        parts = [spec.get(fleet_bundles.CREDENTIALS, {}), spec.get(fleet_bundles.FLEET, {})]
        if fleet_bundles.FLEET not in spec:
            parts = [spec]
        else:
            parts[1] = parts[1].get("content", {}) if isinstance(parts[1], dict) else {}
        keys = tuple(str(k) for part in parts for k in part.get("keys", []))
        services = sorted({str(s) for part in parts for s in part.get("services", {})})
        return keys, tuple(services)
