"""First boot as a resumable sequence (ARCHITECTURE.md). Each step is idempotent and its
result is persisted before the next begins, so a crash or SIGTERM anywhere converges when
the launcher is run again, with no clean-up by an operator:

  1. validate bootstrap.json, before any network call;
  2. load the machine key, or generate and persist it (sealed where possible); then pin
     the operator keys bootstrap.json names (unless keys are pinned already: never
     replaced);
  3. log in with the one-time password, or, when an earlier run already rotated it, with
     the permanent password derived from the key (a still-valid session.json skips 3-4);
  4. rotate the password (logout_devices: false keeps this session);
  5. publish m.bureau.machine_key, join the fleet rooms and the config room;
  6. write session.json;
  7. delete bootstrap.json.

The account, its config room and its invitations are made beforehand by an operator
(`bureau machine provision`, which writes bootstrap.json): the launcher never holds the
hub's registration token nor acts as its admin.

The key is on disk before the password that derives from it is set, so the machine is
never locked out of its account. ``checkpoint`` is called after each step (tests use it
to stop a boot at an exact point, as a crash would).

Because every step is idempotent, a homeserver that is down, overloaded or rate-limiting
is waited out by running the whole sequence again (``until_done``), with jittered,
capped backoff; only answers that retrying cannot change (a refused password, a bad
bootstrap file) end the boot at once.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from bureau import key_store
from bureau.errors import BureauError, InputError, MatrixError, MatrixUnreachable
from bureau.files import UnsafePath, read_private_json, remove_durably
from bureau.launcher import operator_trust
from bureau.machine_state import load_session, save_session
from bureau.matrix.client import Login, MatrixHTTP
from bureau.matrix.fleet_rooms import resolve_fleet_rooms
from bureau.matrix.retry import next_delay
from bureau.passwords import machine_permanent_password
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.files import BootstrapConfig, MachineKey, Session


class Step(StrEnum):
    VALIDATED = "validated"
    KEY_READY = "key-ready"
    LOGGED_IN = "logged-in"
    PASSWORD_ROTATED = "password-rotated"  # noqa: S105 -- a step name, not a password
    KEY_PUBLISHED = "key-published"
    ROOMS_JOINED = "rooms-joined"
    SESSION_SAVED = "session-saved"
    BOOTSTRAP_DELETED = "bootstrap-deleted"


BOOTSTRAP_MAX_BYTES = 64 * 1024  # a real one is under 400 bytes
Checkpoint = Callable[[Step], None]
# Told how long the next wait is and why, before it starts (the launcher extends its
# systemd start timeout by it).
Waiting = Callable[[float, str], None]


def _no_checkpoint(step: Step) -> None:
    del step


@dataclass(frozen=True)
class Machine:
    localpart: str
    server_name: str
    fleet: str
    homeserver_url: str

    @property
    def user_id(self) -> str:
        return names.user_id(self.localpart, self.server_name)

    @property
    def device_id(self) -> str:
        # One stable device per machine, so re-run boots reuse it instead of piling up.
        return "BUREAU_" + hashlib.sha256(self.localpart.encode()).hexdigest()[:10].upper()


@dataclass(frozen=True)
class KeyOptions:
    state_dir: Path
    storage: key_store.KeyStorage
    credentials_directory: str | None


def load_bootstrap(path: Path, machine_name: str) -> BootstrapConfig:
    """Read and check bootstrap.json against --machine-name (short or full)."""
    where = str(path)
    # Strict: first boot runs as root, trusts what this file says, and deletes it.
    raw = read_private_json(path, BOOTSTRAP_MAX_BYTES, strict=True)
    config = BootstrapConfig.from_json(raw, where)
    try:
        wanted = names.expand_entity(machine_name, config.fleet_prefix, "machine")
    except names.InvalidName as exc:
        raise InputError(where, "machine_name", f"--machine-name: {exc}") from None
    if wanted != config.machine_name:
        raise InputError(
            where,
            "machine_name",
            f"is {config.machine_name!r} but --machine-name is {wanted!r}; "
            "this bootstrap file is for another machine",
        )
    return config


def _reusable_session(state_dir: Path, machine: Machine, log: Any) -> Session | None:
    """session.json from an earlier run whose token still answers for this machine."""
    try:
        session = load_session(state_dir)
    except UnsafePath:
        raise  # someone else could have written it: theirs to explain, not ours to replace
    except InputError as exc:
        log.warning("ignoring unusable session file", problem=str(exc))
        return None
    if session is None or session.user_id != machine.user_id:
        return None
    client = MatrixHTTP(session.homeserver_url, session.access_token)
    try:
        user, _ = client.whoami()
    except MatrixError as exc:
        if exc.status in (401, 403):
            log.info("earlier session no longer valid; logging in again", errcode=exc.errcode)
            return None
        raise
    return session if user == machine.user_id else None


def _publish_and_join(
    client: MatrixHTTP, machine: Machine, public_key: str, log: Any, checkpoint: Checkpoint
) -> None:
    fleet_rooms = resolve_fleet_rooms(client, machine.fleet, machine.server_name)
    client.join(fleet_rooms.machine)
    client.put_state(
        fleet_rooms.machine,
        rooms.MACHINE_KEY,
        names.state_key(machine.localpart, machine.server_name),
        MachineKey(public_key).to_json(),
    )
    log.info("machine key published", public_key=public_key, room=fleet_rooms.machine)
    checkpoint(Step.KEY_PUBLISHED)
    config_alias = names.room_alias(machine.localpart, machine.server_name)
    for room in (fleet_rooms.fleet, fleet_rooms.service, config_alias):
        client.join(room)
    log.info("joined fleet rooms and config room", config_room=config_alias)
    checkpoint(Step.ROOMS_JOINED)


def _finish(
    *,
    session: Session,
    machine: Machine,
    public_key: str,
    keys: KeyOptions,
    log: Any,
    checkpoint: Checkpoint,
) -> None:
    client = MatrixHTTP(session.homeserver_url, session.access_token)
    _publish_and_join(client, machine, public_key, log, checkpoint)
    save_session(keys.state_dir, session)
    log.info("session saved", path=str(keys.state_dir / "session.json"), user_id=session.user_id)
    checkpoint(Step.SESSION_SAVED)


def _ensure_key(keys: KeyOptions, log: Any, checkpoint: Checkpoint) -> tuple[Secret, str]:
    secret_key, public_key, how = key_store.ensure(
        keys.state_dir, keys.storage, keys.credentials_directory
    )
    log.info("machine key ready", how=how, public_key=public_key)
    checkpoint(Step.KEY_READY)
    return secret_key, public_key


def _login_first_boot(
    machine: Machine, one_time: Secret, permanent: Secret, log: Any, checkpoint: Checkpoint
) -> Login:
    client = MatrixHTTP(machine.homeserver_url)
    try:
        login = client.login_password(machine.localpart, one_time, device_id=machine.device_id)
    except MatrixError as exc:
        if exc.errcode != "M_FORBIDDEN":
            raise
        log.info("one-time password refused; trying the permanent password (resumed boot)")
        try:
            login = client.login_password(machine.localpart, permanent, device_id=machine.device_id)
        except MatrixError as again:
            if again.errcode == "M_FORBIDDEN":
                raise BureauError(
                    f"{machine.user_id} accepts neither the one-time password in the bootstrap "
                    "file nor the password derived from this machine's key; provision the "
                    "machine again, or restore its original key"
                ) from None
            raise
        checkpoint(Step.LOGGED_IN)
        return login
    log.info("logged in with the one-time password", user_id=login.user_id)
    checkpoint(Step.LOGGED_IN)
    client.with_token(login.access_token).change_password(login.user_id, one_time, permanent)
    log.info("one-time password rotated to the key-derived permanent password")
    checkpoint(Step.PASSWORD_ROTATED)
    return login


def boot_with_bootstrap(
    *,
    bootstrap_file: Path,
    machine_name: str,
    keys: KeyOptions,
    log: Any,
    checkpoint: Checkpoint = _no_checkpoint,
) -> Session:
    config = load_bootstrap(bootstrap_file, machine_name)
    machine = Machine(
        config.machine_name, config.server_name, config.fleet_prefix, config.homeserver_url
    )
    log.info("bootstrap file valid", machine=machine.localpart, homeserver=machine.homeserver_url)
    checkpoint(Step.VALIDATED)
    secret_key, public_key = _ensure_key(keys, log, checkpoint)
    # Pinned before anything is read from Matrix, and never replaced from there.
    if operator_trust.pin_initial(keys.state_dir, config.operator_keys):
        log.info("operator keys pinned", keys=sorted(config.operator_keys))
    session = _reusable_session(keys.state_dir, machine, log)
    if session is None:
        permanent = machine_permanent_password(machine.localpart, secret_key)
        login = _login_first_boot(machine, config.password, permanent, log, checkpoint)
        session = _session_from(login, machine)
    _finish(
        session=session,
        machine=machine,
        public_key=public_key,
        keys=keys,
        log=log,
        checkpoint=checkpoint,
    )
    remove_durably(bootstrap_file)
    log.info("bootstrap file deleted", path=str(bootstrap_file))
    checkpoint(Step.BOOTSTRAP_DELETED)
    return session


def _session_from(login: Login, machine: Machine) -> Session:
    if login.user_id != machine.user_id:
        raise MatrixError(f"the homeserver logged us in as {login.user_id}, not {machine.user_id}")
    return Session(machine.homeserver_url, login.user_id, login.access_token, login.device_id)


def transient(exc: MatrixError) -> bool:
    """Would the same request succeed later? Unreachable, 5xx and 429: yes. Pure."""
    return isinstance(exc, MatrixUnreachable) or exc.status >= 500 or exc.status == 429


def until_done(
    boot: Callable[[], Session],
    *,
    wait_seconds: float,
    log: Any,
    waiting: Waiting,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> Session:
    """Run ``boot`` again after each transient homeserver failure, on bureau.matrix.retry's
    schedule (the server's hint, capped, where it gave one, else jittered backoff) until it
    succeeds or ``wait_seconds`` have passed."""
    deadline = clock() + wait_seconds
    failures = 0
    while True:
        try:
            return boot()
        except MatrixError as exc:
            if not transient(exc):
                raise
            delay = next_delay(failures, exc.retry_after, rng)
            if clock() + delay > deadline:
                if wait_seconds <= 0:
                    raise
                raise BureauError(
                    f"{exc} (still failing after {wait_seconds:g} s of retries; "
                    "--homeserver-wait sets how long first boot waits)"
                ) from None
            failures += 1
            log.warning(
                "homeserver unavailable; first boot will resume",
                problem=str(exc),
                attempt=failures,
                retry_in=round(delay, 1),
            )
            waiting(delay, f"homeserver unavailable ({exc.what}); retrying in {delay:.0f} s")
            sleep(delay)
