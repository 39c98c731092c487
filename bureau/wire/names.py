"""Names, user IDs, state keys and room aliases (WIRE.md "Names" and "Rooms"). Pure.

Functions raise ``InvalidName`` with the problem only; callers add the location (a flag,
a file and field) because only they know it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

LOCALPART_MAX = 84
_LOCALPART_CHARS = re.compile(r"[a-z0-9._=\-/]+")
# The spec's server name grammar: a DNS name, IPv4 or [IPv6] literal, optional :port.
_SERVER_CHARS = re.compile(r"[A-Za-z0-9.\-:\[\]]+")
_PORT = re.compile(r":(\d{1,5})$")


class InvalidName(ValueError):
    pass


def validate_localpart(value: str) -> str:
    if not value:
        raise InvalidName("empty name")
    if len(value) > LOCALPART_MAX:
        raise InvalidName(f"{value!r} is {len(value)} characters; at most {LOCALPART_MAX}")
    if not _LOCALPART_CHARS.fullmatch(value):
        raise InvalidName(f"{value!r} may contain only a-z 0-9 . _ = - /")
    if value.startswith("/") or value.endswith("/"):
        raise InvalidName(f"{value!r} must not start or end with '/'")
    for segment in value.split("/"):
        if not segment:
            raise InvalidName(f"{value!r} has an empty segment")
        if segment.startswith("."):
            raise InvalidName(f"{value!r} has a segment starting with '.'")
    return value


def validate_server_name(value: str) -> str:
    if not value:
        raise InvalidName("empty server name")
    if not _SERVER_CHARS.fullmatch(value):
        raise InvalidName(
            f"{value!r} may contain only letters, digits, '.', '-', ':' and [ ] (IPv6)"
        )
    port = _PORT.search(value)
    if port and not 0 < int(port.group(1)) < 65536:
        raise InvalidName(f"{value!r} has an invalid port")
    host = value[: port.start()] if port else value
    if not host:
        raise InvalidName(f"{value!r} has no host")
    return value


def validate_fleet(value: str) -> str:
    """A fleet is ``<namespace>/fleet/<name>``, e.g. ``bureau/fleet/prod``."""
    validate_localpart(value)
    parts = value.split("/")
    if len(parts) != 3 or parts[1] != "fleet":
        raise InvalidName(f"{value!r} is not a fleet; expected <namespace>/fleet/<name>")
    return value


def namespace_of(fleet: str) -> str:
    return fleet.split("/", 1)[0]


def is_full_entity(name: str) -> bool:
    parts = name.split("/")
    return len(parts) >= 5 and parts[1] == "fleet"


def expand_entity(name: str, fleet: str, entity_type: str | None = None) -> str:
    """Expand ``machine/worker-01`` with the fleet in force; check a full name's fleet.

    With ``entity_type`` the entity must be of that type (``machine/...``)."""
    validate_localpart(name)
    if is_full_entity(name):
        own_fleet = "/".join(name.split("/")[:3])
        if own_fleet != fleet:
            raise InvalidName(f"{name!r} belongs to fleet {own_fleet!r}, not {fleet!r}")
        full = name
    else:
        full = f"{fleet}/{name}"
    rest = full[len(fleet) + 1 :].split("/")
    if len(rest) < 2:
        raise InvalidName(f"{name!r} is not <type>/<name> (for example machine/worker-01)")
    if entity_type is not None and rest[0] != entity_type:
        raise InvalidName(f"{name!r} is not a {entity_type}; expected {entity_type}/<name>")
    return validate_localpart(full)


def fleet_of_entity(full_name: str) -> str:
    if not is_full_entity(full_name):
        raise InvalidName(f"{full_name!r} is not a full entity name")
    return "/".join(full_name.split("/")[:3])


def user_id(localpart: str, server_name: str) -> str:
    return f"@{localpart}:{server_name}"


def state_key(localpart: str, server_name: str) -> str:
    return f"{localpart}:{server_name}"


def room_alias(localpart: str, server_name: str) -> str:
    return f"#{localpart}:{server_name}"


def parse_user_id(value: str) -> tuple[str, str]:
    if not value.startswith("@") or ":" not in value:
        raise InvalidName(f"{value!r} is not a Matrix user ID (@localpart:server)")
    localpart, server = value[1:].split(":", 1)
    validate_server_name(server)
    return localpart, server


def _entity_type(localpart: str) -> str | None:
    """``machine`` for ``<ns>/fleet/<name>/machine/<name>``; None for a name outside a fleet."""
    return localpart.split("/")[3] if is_full_entity(localpart) else None


@dataclass(frozen=True, order=True)
class UserRef:
    """A Matrix account named by Bureau's rules, checked when made. Its spellings are
    explicit: ``localpart``; ``user_id``, ``@<localpart>:<server>``; ``state_key``,
    ``<localpart>:<server>``: the user ID without ``@``, upstream's key for state events
    about an account (credentials, machine_config, machine_key, machine_status), since
    only the account itself may write a state key that starts with ``@`` (MSC3757)."""

    localpart: str
    server: str

    def __post_init__(self) -> None:
        try:
            validate_localpart(self.localpart)
        except InvalidName as exc:
            raise InvalidName(f"localpart: {exc}") from None
        try:
            validate_server_name(self.server)
        except InvalidName as exc:
            raise InvalidName(f"server name: {exc}") from None

    @classmethod
    def from_localpart(cls, localpart: str, server: str) -> Self:
        return cls(localpart, server)

    @classmethod
    def from_user_id(cls, value: str) -> Self:
        if not value.startswith("@") or ":" not in value:
            raise InvalidName(f"{value!r} is not a Matrix user ID (@localpart:server)")
        # A localpart holds no ':'; a server name may (its port).
        localpart, server = value[1:].split(":", 1)
        return cls(localpart, server)

    @classmethod
    def from_state_key(cls, value: str) -> Self:
        if value.startswith("@") or ":" not in value:
            raise InvalidName(f"{value!r} is not an account's state key (localpart:server)")
        localpart, server = value.split(":", 1)
        return cls(localpart, server)

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{self.server}"

    @property
    def state_key(self) -> str:
        return f"{self.localpart}:{self.server}"

    @property
    def room_alias(self) -> str:
        """The account's own room: a machine's config room is ``#<localpart>:<server>``."""
        return f"#{self.localpart}:{self.server}"

    def __str__(self) -> str:
        return self.user_id


@dataclass(frozen=True, order=True)
class MachineRef(UserRef):
    """A machine's account: ``<namespace>/fleet/<name>/machine/<name...>``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if _entity_type(self.localpart) != "machine":
            raise InvalidName(
                f"localpart: {self.localpart!r} is not a machine; "
                "expected <namespace>/fleet/<name>/machine/<name>"
            )

    @property
    def fleet(self) -> str:
        return fleet_of_entity(self.localpart)


@dataclass(frozen=True, order=True)
class PrincipalRef(UserRef):
    """An account a machine runs a proxy (and perhaps a sandbox) for: an agent, a service;
    any Bureau name but a machine's. Whether it may run on a given machine is
    ``check_fleet``'s question."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if _entity_type(self.localpart) == "machine":
            raise InvalidName(f"{self.user_id} is a machine")

    def check_fleet(self, server: str, fleet: str, *, to_run: bool = True) -> Self:
        """Itself, when it is one of ``fleet``'s principals on ``server`` and (``to_run``)
        a name that can have a proxy socket of its own; else InvalidName saying why."""
        check_fleet_principal(self.user_id, server, fleet, to_run=to_run)
        return self

    @property
    def proxy_socket_relpath(self) -> str:
        return proxy_socket_relpath(self.localpart)


def space_alias_localpart(fleet: str) -> str:
    return namespace_of(fleet)


def fleet_room_localpart(fleet: str) -> str:
    return fleet


def machine_room_localpart(fleet: str) -> str:
    return f"{fleet}/machine"


def template_room_localpart(fleet: str) -> str:
    """Templates belong to the namespace, shared by its fleets: ``bureau/template``."""
    return f"{namespace_of(fleet)}/template"


def service_room_localpart(fleet: str) -> str:
    return f"{fleet}/service"


PROXY_SOCKET_SUFFIX = ".proxy.sock"


def check_socket_name(principal_localpart: str) -> str:
    """A principal whose name has a segment ending in ``.proxy.sock`` would need another
    principal's socket path as a directory (``agent/alpha.proxy.sock/x`` lives under
    ``agent/alpha``'s socket): refused wherever a principal is named for running."""
    if any(s.endswith(PROXY_SOCKET_SUFFIX) for s in principal_localpart.split("/")):
        raise InvalidName(
            f"{principal_localpart!r} has a segment ending in {PROXY_SOCKET_SUFFIX!r}, "
            "which collides with another principal's proxy socket"
        )
    return principal_localpart


def proxy_socket_relpath(principal_localpart: str) -> str:
    """Where a principal's proxy listens, relative to the run dir (the upstream layout):
    ``bureau/fleet/prod/agent/alpha`` -> ``fleet/prod/agent/alpha.proxy.sock``."""
    parts = principal_localpart.split("/")
    if not is_full_entity(principal_localpart):
        raise InvalidName(f"{principal_localpart!r} is not a full entity name")
    check_socket_name(principal_localpart)
    return "/".join(["fleet", *parts[2:]]) + PROXY_SOCKET_SUFFIX


def check_fleet_principal(principal: str, server: str, fleet: str, *, to_run: bool = True) -> str:
    """``principal`` (a user ID) as one of ``fleet``'s principals on ``server``, not a
    machine; and (``to_run``) a name that can have a proxy socket of its own. Its
    localpart; else InvalidName saying why."""
    localpart, its_server = parse_user_id(principal)
    validate_localpart(localpart)
    its_fleet = fleet_of_entity(localpart)
    if to_run:
        check_socket_name(localpart)
    if its_server != server or its_fleet != fleet:
        raise InvalidName(f"{principal} is not in this machine's fleet")
    if localpart.split("/")[3] == "machine":
        raise InvalidName(f"{principal} is a machine")
    return localpart
