"""Wire content (WIRE.md) as small frozen dataclasses. ``from_json`` validates and names the
location of the first problem; ``to_json`` gives back exactly what goes on the wire.
Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from bureau.errors import InputError
from bureau.secret import Secret
from bureau.wire import names
from bureau.wire.signing import OperatorKey, PublicKey, public_keys_json, read_public_keys

_HEX64 = re.compile(r"[0-9a-f]{64}")
_AGE_PUBLIC = re.compile(r"age1[02-9ac-hj-np-z]{58}")

MACHINE_KEY_ALGORITHM = "age-x25519"


def validate_homeserver_url(value: str) -> str:
    """http(s)://host[:port][/path], no credentials, query or fragment."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{value!r} must not carry credentials, a query or a fragment")
    try:
        parts.port  # noqa: B018 -- raises on an invalid port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value.rstrip("/")


def _field(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise InputError(where, key, "missing")
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise InputError(where, key, "expected a non-empty string")
    return value


def _required(data: dict[str, str], where: str, key: str) -> str:
    """A KEY=VALUE file's field that must be present and non-empty."""
    value = data.get(key, "")
    if not value:
        raise InputError(where, key, "missing")
    return value


def _object(obj: object, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(where, None, "expected a JSON object")
    return obj


def _checked(where: str, key: str, check: Any, value: str) -> str:
    try:
        return str(check(value))
    except ValueError as exc:
        raise InputError(where, key, str(exc)) from None


@dataclass(frozen=True)
class BootstrapConfig:
    """bootstrap.json: what a provisioned machine needs for its first boot."""

    homeserver_url: str
    server_name: str
    machine_name: str
    password: Secret
    fleet_prefix: str
    # OURS: the operator keys first boot pins (wire/operator_keys.py); upstream ignores it.
    operator_keys: dict[str, PublicKey] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, where: str = "bootstrap.json") -> BootstrapConfig:
        # Fields this version does not know are ignored, as upstream's reader ignores them
        # (lib/bootstrap/config.go ReadConfig: plain json.Unmarshal): a provisioner newer
        # than this launcher may add one. The fields we know are validated all the same.
        data = _object(obj, where)
        homeserver_url = _checked(
            where, "homeserver_url", validate_homeserver_url, _field(data, "homeserver_url", where)
        )
        server_name = _checked(
            where, "server_name", names.validate_server_name, _field(data, "server_name", where)
        )
        fleet = _checked(
            where, "fleet_prefix", names.validate_fleet, _field(data, "fleet_prefix", where)
        )
        machine = _field(data, "machine_name", where)
        if not names.is_full_entity(machine):
            raise InputError(where, "machine_name", f"{machine!r} is not a full machine name")
        machine = _checked(
            where, "machine_name", lambda v: names.expand_entity(v, fleet, "machine"), machine
        )
        password = _field(data, "password", where)
        if not _HEX64.fullmatch(password):
            # Never echo the value: it is the one-time password.
            raise InputError(where, "password", "expected 64 lowercase hex characters")
        keys = read_public_keys(data.get("operator_keys", {}), f"{where}: operator_keys")
        return cls(homeserver_url, server_name, machine, Secret(password), fleet, keys)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "homeserver_url": self.homeserver_url,
            "server_name": self.server_name,
            "machine_name": self.machine_name,
            "password": self.password.reveal(),
            "fleet_prefix": self.fleet_prefix,
        }
        if self.operator_keys:
            out["operator_keys"] = public_keys_json(self.operator_keys)
        return out


@dataclass(frozen=True)
class Session:
    """<state-dir>/session.json: the machine's Matrix login."""

    homeserver_url: str
    user_id: str
    access_token: Secret
    device_id: str | None = None

    @classmethod
    def from_json(cls, obj: object, where: str = "session.json") -> Session:
        data = _object(obj, where)
        url = _checked(
            where, "homeserver_url", validate_homeserver_url, _field(data, "homeserver_url", where)
        )
        user = _field(data, "user_id", where)
        _checked(where, "user_id", names.parse_user_id, user)
        token = _field(data, "access_token", where)
        device = data.get("device_id")
        if device is not None and not isinstance(device, str):
            raise InputError(where, "device_id", "expected a string")
        return cls(url, user, Secret(token), device)

    def to_json(self) -> dict[str, str]:
        out = {
            "homeserver_url": self.homeserver_url,
            "user_id": self.user_id,
            "access_token": self.access_token.reveal(),
        }
        if self.device_id:
            out["device_id"] = self.device_id
        return out


DEFAULT_FLEET = "bureau/fleet/prod"

# The namespace's rooms as upstream's credential file names them (upstream
# cmd/bureau/matrix/doctor.go standardRoomsForNamespace, written by setup.go
# writeCredentials), in the order upstream writes them: role -> key.
NAMESPACE_ROOM_KEYS = {
    "system": "MATRIX_SYSTEM_ROOM",
    "template": "MATRIX_TEMPLATE_ROOM",
    "pipeline": "MATRIX_PIPELINE_ROOM",
    "artifact": "MATRIX_ARTIFACT_ROOM",
    "dev": "MATRIX_DEV_TEAM_ROOM",
}
_CREDENTIAL_KEYS = (
    "MATRIX_HOMESERVER_URL",
    "MATRIX_ADMIN_USER",
    "MATRIX_ADMIN_TOKEN",
    "MATRIX_REGISTRATION_TOKEN",
    "MATRIX_SPACE_ROOM",
    *NAMESPACE_ROOM_KEYS.values(),
    "BUREAU_SERVER_NAME",
    "BUREAU_FLEET",
    "BUREAU_OPERATOR_SIGNING_KEY",
)
SIGNING_KEY = "BUREAU_OPERATOR_SIGNING_KEY"


def _room_id(where: str, key: str, value: str) -> str:
    # Room version 12 IDs have no ":server" part: only the sigil is certain.
    if not value.startswith("!") or len(value) < 2 or any(c.isspace() for c in value):
        raise InputError(where, key, f"{value!r} is not a room ID (!...)")
    return value


@dataclass(frozen=True)
class OperatorCredentials:
    """The operator credential file (``bureau-creds``), KEY=VALUE.

    Read liberally: upstream's file (``MATRIX_*`` keys only) is one, its server name
    taken from the admin's user ID as upstream does, its fleet from ``--fleet`` or
    DEFAULT_FLEET. Keys this version does not know are kept in ``extra`` and written
    back."""

    homeserver_url: str
    admin_user: str
    admin_token: Secret
    registration_token: Secret
    space_room: str
    server_name: str
    fleet: str
    # role (NAMESPACE_ROOM_KEYS) -> room ID, as recorded; the aliases are authoritative.
    namespace_rooms: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    recorded_fleet: bool = True  # whether the file named the fleet (BUREAU_FLEET)
    # OURS: the operator's private signing key (wire/signing.py); upstream's file has none.
    signing_key: OperatorKey | None = None

    @classmethod
    def from_env(
        cls, data: dict[str, str], where: str, fleet: str | None = None
    ) -> OperatorCredentials:
        """``fleet`` (already validated, from --fleet) wins over the file's."""
        need = partial(_required, data, where)
        url = _checked(
            where, "MATRIX_HOMESERVER_URL", validate_homeserver_url, need("MATRIX_HOMESERVER_URL")
        )
        admin = need("MATRIX_ADMIN_USER")
        admin_server = _checked(
            where, "MATRIX_ADMIN_USER", lambda v: names.parse_user_id(v)[1], admin
        )
        server = admin_server
        if data.get("BUREAU_SERVER_NAME"):
            server = _checked(
                where, "BUREAU_SERVER_NAME", names.validate_server_name, data["BUREAU_SERVER_NAME"]
            )
        recorded = data.get("BUREAU_FLEET", "")
        if recorded:
            recorded = _checked(where, "BUREAU_FLEET", names.validate_fleet, recorded)
        rooms = {
            role: _room_id(where, key, data[key])
            for role, key in NAMESPACE_ROOM_KEYS.items()
            if data.get(key)
        }
        return cls(
            homeserver_url=url,
            admin_user=admin,
            admin_token=Secret(need("MATRIX_ADMIN_TOKEN")),
            registration_token=Secret(need("MATRIX_REGISTRATION_TOKEN")),
            space_room=_room_id(where, "MATRIX_SPACE_ROOM", need("MATRIX_SPACE_ROOM")),
            server_name=server,
            fleet=fleet or recorded or DEFAULT_FLEET,
            namespace_rooms=rooms,
            extra={k: v for k, v in data.items() if k not in _CREDENTIAL_KEYS},
            recorded_fleet=bool(recorded),
            signing_key=OperatorKey.from_text(Secret(signing), f"{where}: {SIGNING_KEY}")
            if (signing := data.get(SIGNING_KEY))
            else None,
        )

    def to_env(self) -> dict[str, str]:
        """Upstream's keys in upstream's order (so its tools read our file: `bureau matrix
        user create --operator` needs every room key), then ours, then those kept."""
        out = {
            "MATRIX_HOMESERVER_URL": self.homeserver_url,
            "MATRIX_ADMIN_USER": self.admin_user,
            "MATRIX_ADMIN_TOKEN": self.admin_token.reveal(),
            "MATRIX_REGISTRATION_TOKEN": self.registration_token.reveal(),
            "MATRIX_SPACE_ROOM": self.space_room,
        }
        for role, key in NAMESPACE_ROOM_KEYS.items():
            if role in self.namespace_rooms:
                out[key] = self.namespace_rooms[role]
        out["BUREAU_SERVER_NAME"] = self.server_name
        out["BUREAU_FLEET"] = self.fleet
        if self.signing_key is not None:
            out[SIGNING_KEY] = self.signing_key.reveal().reveal()
        out.update(sorted(self.extra.items()))
        return out


@dataclass(frozen=True)
class MachineKey:
    """Content of ``m.bureau.machine_key``."""

    public_key: str
    algorithm: str = MACHINE_KEY_ALGORITHM

    @classmethod
    def from_json(cls, obj: object, where: str = "m.bureau.machine_key") -> MachineKey:
        data = _object(obj, where)
        algorithm = _field(data, "algorithm", where)
        if algorithm != MACHINE_KEY_ALGORITHM:
            raise InputError(where, "algorithm", f"expected {MACHINE_KEY_ALGORITHM!r}")
        public_key = _field(data, "public_key", where)
        if not _AGE_PUBLIC.fullmatch(public_key):
            raise InputError(where, "public_key", "expected an age1... X25519 recipient")
        return cls(public_key, algorithm)

    def to_json(self) -> dict[str, str]:
        return {"algorithm": self.algorithm, "public_key": self.public_key}


def is_age_public_key(value: str) -> bool:
    return bool(_AGE_PUBLIC.fullmatch(value))


@dataclass(frozen=True)
class MachineConf:
    """``/etc/bureau/machine.conf`` (KEY=VALUE, 0644): the units' EnvironmentFile."""

    homeserver_url: str
    machine_name: str  # the full localpart
    server_name: str
    fleet: str

    @classmethod
    def from_env(cls, data: dict[str, str], where: str) -> MachineConf:
        need = partial(_required, data, where)
        url = _checked(
            where, "BUREAU_HOMESERVER_URL", validate_homeserver_url, need("BUREAU_HOMESERVER_URL")
        )
        server = _checked(
            where, "BUREAU_SERVER_NAME", names.validate_server_name, need("BUREAU_SERVER_NAME")
        )
        fleet = _checked(where, "BUREAU_FLEET", names.validate_fleet, need("BUREAU_FLEET"))
        machine = _checked(
            where,
            "BUREAU_MACHINE_NAME",
            lambda n: names.expand_entity(n, fleet, "machine"),
            need("BUREAU_MACHINE_NAME"),
        )
        if machine != data["BUREAU_MACHINE_NAME"]:
            raise InputError(where, "BUREAU_MACHINE_NAME", f"expected the full name {machine!r}")
        return cls(url, machine, server, fleet)

    @classmethod
    def from_session(cls, session: Session) -> MachineConf:
        localpart, server = names.parse_user_id(session.user_id)
        return cls(session.homeserver_url, localpart, server, names.fleet_of_entity(localpart))

    def to_env(self) -> dict[str, str]:
        return {
            "BUREAU_HOMESERVER_URL": self.homeserver_url,
            "BUREAU_MACHINE_NAME": self.machine_name,
            "BUREAU_SERVER_NAME": self.server_name,
            "BUREAU_FLEET": self.fleet,
        }


def validate_cache_url(value: str) -> str:
    """A binary cache: http(s)://host[:port][/path]."""
    return validate_homeserver_url(value)


_NIX_PUBLIC_KEY = re.compile(r"[A-Za-z0-9._+-]+:[A-Za-z0-9+/]{43}=")


def validate_nix_public_key(value: str) -> str:
    """``name:base64`` of an ed25519 public key, as nix.conf's trusted-public-keys."""
    if not _NIX_PUBLIC_KEY.fullmatch(value):
        raise ValueError(f"{value!r} is not a Nix public key (name:base64 of 32 bytes)")
    return value


@dataclass(frozen=True)
class FleetCache:
    """Content of ``m.bureau.fleet_cache`` (fleet room, state key ""). Upstream's
    FleetCacheContent (lib/schema/events_fleet.go): ``name`` is optional there
    (``omitempty``: a cache without named push), and its ``compose_template`` and
    ``default_system``, like any field a later version adds, are not used here but kept
    in ``extra`` and written back: upstream's `bureau environment compose` reads them."""

    url: str
    name: str | None
    public_keys: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, where: str = "m.bureau.fleet_cache") -> FleetCache:
        data = _object(obj, where)
        url = _checked(where, "url", validate_cache_url, _field(data, "url", where))
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise InputError(where, "name", "expected a string")
        keys = data.get("public_keys")
        if not isinstance(keys, list) or not keys:
            raise InputError(where, "public_keys", "expected a non-empty list of strings")
        checked = []
        for index, key in enumerate(keys):
            if not isinstance(key, str):
                raise InputError(where, f"public_keys[{index}]", "expected a string")
            checked.append(_checked(where, f"public_keys[{index}]", validate_nix_public_key, key))
        extra = {k: v for k, v in data.items() if k not in ("url", "name", "public_keys")}
        return cls(url, name or None, tuple(checked), extra)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        if self.name:
            out["name"] = self.name
        out["public_keys"] = list(self.public_keys)
        return {**out, **self.extra}
