"""The doctor's checks that need the machine's session: the homeserver answers, the
session is valid, the key the fleet sees is the local one, nix.conf trusts the fleet's
binary cache, and the launcher and its proxies answer on their sockets."""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from bureau import key_store, nix_conf
from bureau.daemon.launcher_client import LauncherImpostor, check_peer, peer_credentials
from bureau.doctor.findings import Finding, fail, not_applicable, ok
from bureau.doctor.host_checks import RUN_DIR, STATE_DIR, trusted
from bureau.errors import BureauError, InputError, MatrixError
from bureau.files import atomic_write
from bureau.host import Host, run_tool
from bureau.machine_state import load_session
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.fleet_rooms import fleet_room_aliases
from bureau.profile import materialized as profile_file
from bureau.profile import model, sources
from bureau.wire import names, rooms
from bureau.wire.files import FleetCache, Session
from bureau.wire.launcher_protocol import (
    MAX_MESSAGE,
    Listing,
    ListRequest,
    PrincipalState,
    ProtocolError,
    Refusal,
    read_answer,
)

NIX_CONF = Path("/etc/nix/nix.conf")
SOCKET_TIMEOUT = 10.0


class MachineChecks:
    def __init__(
        self, host: Host, nix_conf_dir: str | None = None, start_services: bool = True
    ) -> None:
        self.host = host
        self.start_services = start_services
        self.nix_conf = Path(nix_conf_dir) / "nix.conf" if nix_conf_dir else NIX_CONF
        self._session: Session | None = None
        self._client: MatrixHTTP | None = None

    def session(self) -> Iterator[Finding]:
        """The session answers whoami as this machine; the checks after it need it."""
        self._client = None
        try:
            session = load_session(self.host.path(STATE_DIR), trusted(self.host))
        except PermissionError:
            yield fail("session", f"{STATE_DIR} is not readable", "run the doctor as root")
            return
        except InputError as exc:
            yield fail("session", str(exc), "provision the machine again")
            return
        if session is None:
            yield fail("session", f"no {STATE_DIR}/session.json", "run the launcher's first boot")
            return
        client = MatrixHTTP(session.homeserver_url, session.access_token, max_attempts=2)
        try:
            client.versions()
        except MatrixError as exc:
            yield fail("homeserver reachable", str(exc), "check the network and the hub")
            return
        yield ok("homeserver reachable", session.homeserver_url)
        try:
            user, _ = client.whoami()
        except MatrixError as exc:
            yield fail(
                "session",
                f"{session.user_id}: {exc}",
                "the machine was decommissioned or its token revoked: provision it again",
            )
            return
        if user != session.user_id:
            yield fail("session", f"the token is {user}'s, not {session.user_id}'s")
            return
        self._session, self._client = session, client
        yield ok("session", session.user_id)

    def _fleet_state(self, role: str, event_type: str, key: str) -> dict[str, Any] | None:
        """A state event of one of the machine's fleet rooms, read with its session."""
        if self._session is None or self._client is None:
            raise BureauError("no valid session")
        localpart, server = names.parse_user_id(self._session.user_id)
        alias = fleet_room_aliases(names.fleet_of_entity(localpart), server)[role]
        room = self._client.resolve_alias(alias)
        if room is None:
            raise BureauError(f"{alias}: no such room")
        return self._client.get_state(room, event_type, key)

    def _published(self, name: str, event_type: str, absent: str) -> dict[str, Any] | Finding:
        """Fleet-room state for a check, or the finding that replaces the check."""
        try:
            content = self._fleet_state("fleet", event_type, "")
        except BureauError as exc:
            return fail(name, str(exc))
        return content if content else not_applicable(name, absent)

    def published_key(self) -> Iterator[Finding]:
        if self._client is None or self._session is None:
            return
        name = "published key"
        try:
            local = self.host.path(STATE_DIR / key_store.PUBLIC_FILE).read_text().strip()
        except OSError:
            return  # the machine key check says so
        try:
            content = self._fleet_state(
                "machine",
                rooms.MACHINE_KEY,
                names.UserRef.from_user_id(self._session.user_id).state_key,
            )
        except BureauError as exc:
            yield fail(name, str(exc))
            return
        published = (content or {}).get("public_key")
        if published == local:
            yield ok(name, "the fleet sees this machine's key")
        else:
            yield fail(
                name,
                f"the fleet has {published or 'no key'}, this machine {local}",
                "run the launcher's first boot again (it republishes the key)",
            )

    def substituter(self) -> Iterator[Finding]:
        if self._client is None:
            return
        name = f"nix.conf trusts the fleet cache ({self.nix_conf})"
        content = self._published(name, rooms.FLEET_CACHE, "the fleet publishes no binary cache")
        if isinstance(content, Finding):
            yield content
            return
        try:
            cache = FleetCache.from_json(content)
        except InputError as exc:
            yield fail(name, str(exc), "publish it again: bureau fleet cache set")
            return
        path = self.host.path(self.nix_conf)
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        missing = [k for k in cache.public_keys if not nix_conf.trusts(text, cache.url, k)]
        if not missing:
            yield ok(name, cache.url)
            return

        def fix() -> None:
            updated = text
            for key in cache.public_keys:
                updated = nix_conf.with_trust(updated, cache.url, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, updated.encode(), 0o644)
            nix_daemon_active = (
                self.host.systemd_running
                and run_tool("systemctl", "is-active", "--quiet", "nix-daemon").returncode == 0
            )
            if nix_daemon_active:
                run_tool("systemctl", "restart", "nix-daemon")

        yield fail(name, f"does not trust {cache.url} with {missing[0]}", "add them", fix)

    def fleet_profile(self) -> Iterator[Finding]:
        """The profile the fleet publishes is materialized here, and verifies."""
        if self._client is None:
            return
        target = RUN_DIR / profile_file.FILE_NAME
        name = f"fleet profile {target}"
        content = self._published(name, rooms.FLEET_PROFILE, "the fleet publishes no profile")
        if isinstance(content, Finding):
            yield content
            return
        try:
            published = model.from_event(content)
        except ValueError as exc:
            yield fail(name, str(exc), "publish it again: bureau fleet profile set")
            return
        path = self.host.path(target)
        try:
            local = sources.parse_env_file(path.read_text())
        except FileNotFoundError:
            local = {}
        if local != published:
            yield fail(
                name,
                "missing" if not local else "differs from the fleet's",
                "bureau-daemon writes it; written now from the fleet room",
                partial(profile_file.apply, path.parent, content, _quiet),
            )
            return
        problems = model.violations(published)
        if problems:
            yield fail(name, problems[0], "publish a consistent one: bureau fleet profile set")
            return
        yield ok(name, model.summary(published))

    def sockets(self) -> Iterator[Finding]:
        run_dir = self.host.path(RUN_DIR)
        launcher = run_dir / "launcher.sock"
        name = f"launcher socket {RUN_DIR / 'launcher.sock'}"
        if not self.start_services and not launcher.exists():
            yield not_applicable(name, "services not started (--no-start)")
            return
        owners = trusted(self.host)
        try:
            principals = _launcher_list(launcher, owners)
        except LauncherImpostor as exc:
            yield fail(name, str(exc), "stop that process, then restart bureau-launcher")
            return
        except OSError as exc:
            yield fail(name, exc.strerror or str(exc), "start bureau-launcher")
            return
        yield ok(name, f"{len(principals)} principals")
        for item in principals:
            principal, path = item.principal.user_id, Path(item.socket)
            if _proxy_healthy(path, owners):
                yield ok(f"proxy of {principal}")
            else:
                yield fail(
                    f"proxy of {principal}",
                    f"{path} does not answer /health",
                    "the launcher restarts it; see journalctl -u bureau-launcher",
                )


class _Quiet:
    """A logger for fixes whose outcome the doctor reports itself."""

    def info(self, *_args: object, **_kwargs: object) -> None:
        pass

    error = info


_quiet = _Quiet()


def _launcher_list(path: Path, owners: Collection[int]) -> list[PrincipalState]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SOCKET_TIMEOUT)
        sock.connect(str(path))
        check_peer(sock, path, owners)
        sock.sendall(ListRequest().to_line())
        data = sock.makefile("rb").readline(MAX_MESSAGE)
    try:
        answer = read_answer(data, Listing.from_json)
    except ProtocolError as exc:
        raise OSError(0, f"the launcher answered in an unknown shape: {exc}") from None
    if isinstance(answer, Refusal):
        raise OSError(0, f"the launcher refused: {answer.error}")
    return list(answer.principals)


def _proxy_healthy(path: Path, owners: Collection[int]) -> bool:
    """A proxy answers /health on its socket, and it is bureau's (not a socket someone
    else bound in its place)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(SOCKET_TIMEOUT)
            sock.connect(str(path))
            if peer_credentials(sock)[1] not in owners:
                return False
            sock.sendall(b"GET /health HTTP/1.0\r\nHost: bureau\r\n\r\n")
            return sock.makefile("rb").readline(1024).split()[1:2] == [b"200"]
    except OSError:
        return False
