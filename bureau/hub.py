"""The embedded homeserver: a real Synapse on SQLite, bound to 127.0.0.1 only, for
development, demos and tests.

State directory layout (all created by ``up``):
    hub.json            server name, port and URL this hub was generated for
    homeserver.yaml     Synapse's config, generated once (0600: it holds Synapse's secrets)
    registration-token  the hub's registration token (0600)
    hub.pid             pid and kernel start time of the Synapse process we started
    homeserver.log      Synapse's log; synapse.out its stdout/stderr
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bureau.errors import HubError, MatrixError
from bureau.files import atomic_write, make_dirs
from bureau.launcher.processes import process_start_time
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.synapse_admin import register_server_admin
from bureau.passwords import ADMIN_LOCALPART, admin_password
from bureau.secret import Secret

DEFAULT_PORT = 8008
DEFAULT_SERVER_NAME = "bureau.local"
BIND_ADDRESS = "127.0.0.1"

# One operator provisioning a fleet makes bursts of logins, registrations, room creations
# and invites that Synapse's public-server defaults would throttle.
_GENEROUS = {"per_second": 100, "burst_count": 1000}
RATE_LIMITS: dict[str, Any] = {
    "rc_message": _GENEROUS,
    "rc_registration": _GENEROUS,
    "rc_registration_token_validity": _GENEROUS,
    "rc_login": {"address": _GENEROUS, "account": _GENEROUS, "failed_attempts": _GENEROUS},
    "rc_joins": {"local": _GENEROUS, "remote": _GENEROUS},
    "rc_joins_per_room": _GENEROUS,
    "rc_invites": {"per_room": _GENEROUS, "per_user": _GENEROUS, "per_issuer": _GENEROUS},
    "rc_room_creation": _GENEROUS,
    "rc_3pid_validation": _GENEROUS,
    "rc_key_requests": _GENEROUS,
    "rc_profile": _GENEROUS,
}

# Rooms created without a room_version get 11, as ours pin it (bureau.wire.rooms.ROOM_VERSION):
# upstream's tools create rooms without one and list their creator in the power levels,
# which room version 12 (Synapse's default from 1.136) refuses, so that upstream's `matrix
# setup`, `fleet create` and `machine provision` fail against a hub that defaults to 12.
ROOM_DEFAULTS: dict[str, Any] = {"default_room_version": "11"}


@dataclass(frozen=True)
class HubStatus:
    url: str
    pid: int
    server_name: str


@dataclass(frozen=True)
class HubSettings:
    server_name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{BIND_ADDRESS}:{self.port}"


class Hub:
    def __init__(self, state_dir: Path, *, bcrypt_rounds: int = 12) -> None:
        """``bcrypt_rounds`` is Synapse's password hashing cost, written into a newly
        generated config; 12 (Synapse's default) unless a test suite, whose subject is
        not hashing, asks for its minimum of 4."""
        self.dir = Path(state_dir).absolute()
        self._bcrypt_rounds = bcrypt_rounds
        # Held so that the process we started is reaped by us, not reported as leaked.
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def token_file(self) -> Path:
        return self.dir / "registration-token"

    @property
    def _pid_file(self) -> Path:
        return self.dir / "hub.pid"

    @property
    def _settings_file(self) -> Path:
        return self.dir / "hub.json"

    # -- status ------------------------------------------------------------------------

    def settings(self) -> HubSettings | None:
        try:
            data = json.loads(self._settings_file.read_text())
            return HubSettings(str(data["server_name"]), int(data["port"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            raise HubError(f"{self._settings_file}: not a hub settings file") from None

    def status(self) -> HubStatus | None:
        settings = self.settings()
        pid = self._running_pid()
        if settings is None or pid is None:
            return None
        return HubStatus(settings.url, pid, settings.server_name)

    def _running_pid(self) -> int | None:
        """The pid we started, if that very process is still alive (not a reused pid)."""
        try:
            data = json.loads(self._pid_file.read_text())
            pid, started = int(data["pid"]), int(data["start_time"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return pid if process_start_time(pid) == started else None

    # -- up ----------------------------------------------------------------------------

    def up(
        self, port: int | None = None, server_name: str | None = None, wait_seconds: float = 180
    ) -> tuple[HubStatus, bool]:
        """Start the hub unless it runs. Returns its status and whether it was started."""
        make_dirs(self.dir, 0o700)
        settings = self._settings_for(port, server_name)
        running = self.status()
        if running is not None:
            return running, False
        self._generate_once(settings)
        proc = self._spawn()
        try:
            self._wait_until_answering(settings, proc, wait_seconds)
            self._ensure_registration_token()
            self._ensure_server_admin(settings)
            self._wait_for_schema_updates(proc, wait_seconds)
        except BaseException:
            self.down(grace=10)
            raise
        return HubStatus(settings.url, proc.pid, settings.server_name), True

    def _settings_for(self, port: int | None, server_name: str | None) -> HubSettings:
        existing = self.settings()
        if existing is None:
            return HubSettings(server_name or DEFAULT_SERVER_NAME, port or DEFAULT_PORT)
        if server_name is not None and server_name != existing.server_name:
            raise HubError(
                f"{self.dir}: this hub was generated for server name {existing.server_name!r}, "
                f"not {server_name!r}; use another --state-dir for another server name"
            )
        if port is not None and port != existing.port:
            raise HubError(
                f"{self.dir}: this hub listens on port {existing.port}, not {port}; "
                "use another --state-dir for another port"
            )
        return existing

    def _generate_once(self, settings: HubSettings) -> None:
        config = self.dir / "homeserver.yaml"
        if not config.exists():
            # Synapse's own dependency, present exactly where the hub extra is installed.
            import yaml  # noqa: PLC0415

            synapse_config = _synapse_config(self.dir, settings, self._bcrypt_rounds)
            body = yaml.safe_dump(synapse_config, sort_keys=False)
            atomic_write(config, body.encode(), 0o600)
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "synapse.app.homeserver",
                    "-c",
                    str(config),
                    "--generate-keys",
                ],
                cwd=self.dir,
                capture_output=True,
                text=True,
                check=False,
                umask=0o077,
            )
            if result.returncode != 0:
                config.unlink()
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise HubError(f"synapse could not generate its signing key: {last}")
            atomic_write(
                self._settings_file,
                json.dumps({"server_name": settings.server_name, "port": settings.port}).encode(),
                0o644,
            )
        else:
            self._upgrade_config(config)
        if not self.token_file.exists():
            # Synapse limits tokens to [A-Za-z0-9._~-]; token_urlsafe stays inside that.
            atomic_write(self.token_file, secrets.token_urlsafe(32).encode() + b"\n", 0o600)

    def _upgrade_config(self, config: Path) -> None:
        """A hub generated by an older bureau gets the settings added since (an operator's
        own value for one is kept)."""
        import yaml  # noqa: PLC0415 -- as in _generate_once

        current = yaml.safe_load(config.read_text())
        missing = {k: v for k, v in ROOM_DEFAULTS.items() if k not in current}
        if isinstance(current, dict) and missing:
            body = yaml.safe_dump({**current, **missing}, sort_keys=False)
            atomic_write(config, body.encode(), 0o600)

    def _write_log_config(self) -> None:
        """Rewritten at every start, so that a hub generated by an older bureau logs as
        this one does."""
        import yaml  # noqa: PLC0415

        body = yaml.safe_dump(_log_config(self.dir)).encode()
        path = self.dir / "log.config"
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == body:
                return
        atomic_write(path, body, 0o600)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._write_log_config()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        out = os.fdopen(os.open(self.dir / "synapse.out", flags, 0o600), "ab")
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "synapse.app.homeserver",
                    "-c",
                    str(self.dir / "homeserver.yaml"),
                ],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env=_synapse_env(),
                # Its database holds every access token and its log what it logs: whatever
                # umask the operator runs with, only the hub's user may read them.
                umask=0o077,
            )
        finally:
            out.close()
        self._child = proc
        started = process_start_time(proc.pid)
        atomic_write(
            self._pid_file, json.dumps({"pid": proc.pid, "start_time": started}).encode(), 0o644
        )
        return proc

    def _wait_until_answering(
        self, settings: HubSettings, proc: subprocess.Popen[bytes], wait_seconds: float
    ) -> None:
        client = MatrixHTTP(settings.url, timeout=5, max_attempts=1)
        deadline = time.monotonic() + wait_seconds
        while True:
            if proc.poll() is not None:
                raise HubError(f"synapse exited with status {proc.returncode}: {self._last_log()}")
            try:
                client.versions()
                return
            except MatrixError:
                if time.monotonic() > deadline:
                    raise HubError(
                        f"synapse did not answer on {settings.url} within {wait_seconds:.0f} s; "
                        f"see {self.dir / 'homeserver.log'}"
                    ) from None
            # No readiness signal exists for a child Synapse: poll its versions endpoint.
            time.sleep(0.2)

    def _last_log(self) -> str:
        for name in ("synapse.out", "homeserver.log"):
            path = self.dir / name
            with contextlib.suppress(OSError):
                lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
                if lines:
                    return f"{lines[-1].strip()} (see {path})"
        return f"no output (see {self.dir})"

    def _ensure_registration_token(self) -> None:
        """Seed the token row directly: the embedded hub has no admin account to create
        it through the admin API, and Synapse reads the table on every registration."""
        token = self.token_file.read_text().strip()
        with contextlib.closing(sqlite3.connect(self.dir / "homeserver.db", timeout=30)) as db:
            try:
                with db:
                    db.execute(
                        "INSERT OR IGNORE INTO registration_tokens"
                        " (token, uses_allowed, pending, completed, expiry_time)"
                        " VALUES (?, NULL, 0, 0, NULL)",
                        (token,),
                    )
            except sqlite3.Error as exc:
                raise HubError(f"could not register the hub's registration token: {exc}") from None

    def _wait_for_schema_updates(self, proc: subprocess.Popen[bytes], wait_seconds: float) -> None:
        """Ready means every background schema update of a new database is done."""
        deadline = time.monotonic() + wait_seconds
        with contextlib.closing(sqlite3.connect(self.dir / "homeserver.db", timeout=30)) as db:
            while db.execute("SELECT COUNT(*) FROM background_updates").fetchone()[0]:
                if proc.poll() is not None:
                    raise HubError(
                        f"synapse exited with status {proc.returncode}: {self._last_log()}"
                    )
                if time.monotonic() > deadline:
                    raise HubError(
                        f"synapse's schema updates did not finish within {wait_seconds:.0f} s; "
                        f"see {self.dir / 'homeserver.log'}"
                    )
                time.sleep(0.2)

    def _ensure_server_admin(self, settings: HubSettings) -> None:
        """Register bureau-admin as a *server* admin through Synapse's shared-secret admin
        registration (what register_new_matrix_user -a does), with the password that
        `bureau matrix setup` derives from the registration token. Decommissioning and
        re-provisioning a machine deactivate and reactivate its account through the
        server admin API."""
        import yaml  # noqa: PLC0415 -- Synapse's own dependency, as in _generate_once

        config = yaml.safe_load((self.dir / "homeserver.yaml").read_text())
        shared = config.get("registration_shared_secret") if isinstance(config, dict) else None
        if not isinstance(shared, str):
            return  # a hub generated before bureau made its admin a server admin
        token = Secret(self.token_file.read_text().strip())
        client = MatrixHTTP(settings.url)
        try:
            register_server_admin(client, ADMIN_LOCALPART, admin_password(token), Secret(shared))
        except MatrixError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise HubError(f"could not register the hub's server admin: {exc}") from None

    # -- down --------------------------------------------------------------------------

    def down(self, grace: float = 30) -> int | None:
        """Stop the process this hub started; returns its pid, or None if none ran."""
        pid = self._running_pid()
        if pid is not None:
            _terminate(pid, grace)
        if self._child is not None:
            self._child.wait()
            self._child = None
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()
        return pid


def _synapse_env() -> dict[str, str]:
    # Synapse needs nothing from our environment but PATH and locale; in particular it must
    # not inherit sd_notify sockets or anything a caller put there.
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


def _terminate(pid: int, grace: float) -> None:
    started = process_start_time(pid)
    if started is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while process_start_time(pid) == started:
        _reap(pid)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _log_config(state_dir: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.handlers.RotatingFileHandler",
                "formatter": "plain",
                "filename": str(state_dir / "homeserver.log"),
                "maxBytes": 10 << 20,
                "backupCount": 2,
                "encoding": "utf8",
            }
        },
        "loggers": {
            "synapse.storage.SQL": {"level": "WARNING"},
            # At INFO it logs the registration token of every registration.
            "synapse.handlers.auth": {"level": "WARNING"},
        },
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def _synapse_config(state_dir: Path, settings: HubSettings, bcrypt_rounds: int) -> dict[str, Any]:
    return {
        "server_name": settings.server_name,
        "bcrypt_rounds": bcrypt_rounds,
        "public_baseurl": settings.url + "/",
        "listeners": [
            {
                "port": settings.port,
                "bind_addresses": [BIND_ADDRESS],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(state_dir / "homeserver.db")}},
        "log_config": str(state_dir / "log.config"),
        "media_store_path": str(state_dir / "media_store"),
        "signing_key_path": str(state_dir / "signing.key"),
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "registration_shared_secret": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "report_stats": False,
        "enable_metrics": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        "enable_registration": True,
        "registration_requires_token": True,
        # A new database's schema updates run back to back, not one a second: until they
        # are done some admin calls fail on SQLite (reactivating an account upserts on an
        # index that one of them builds).
        "background_updates": {"sleep_enabled": False},
        **ROOM_DEFAULTS,
        **RATE_LIMITS,
    }
