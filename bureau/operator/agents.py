"""``bureau agent create|list|show|destroy``: a principal in one go, as upstream's agent
create does: its template checked, its own Matrix account, its credentials bundle (its
Matrix token plus the secrets given) and its assignment. Every step is skipped when done,
so running create again converges and an interrupted destroy is finished by running it
again.

The principal's Matrix token is minted through Synapse's admin API (log in as the user):
the operator never holds a password for it, and the token goes straight into the bundle,
encrypted to the machine. In the sandbox the workload reaches Matrix as itself through its
proxy's ``matrix`` service, never holding the token."""

from __future__ import annotations

import secrets as random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bureau import names, rooms
from bureau.credentials_event import CredentialsEvent, ServiceRoute
from bureau.errors import BureauError, InputError, MatrixError
from bureau.machine_config import MachineConfig
from bureau.matrix_http import MatrixHTTP
from bureau.operator import assignments, templates
from bureau.operator.credentials import admin_client
from bureau.operator.machines import ENROLLED, list_machines
from bureau.operator.principal_credentials import (
    CredentialRequest,
    config_room_of,
    machine_public_key,
    provision,
)
from bureau.schema import OperatorCredentials
from bureau.secret import Secret
from bureau.template_model import TemplateRef
from bureau.template_resolve import resolve

MATRIX_SERVICE = "matrix"
MATRIX_TOKEN = "MATRIX_TOKEN"  # noqa: S105 -- the name of a credential, not one


@dataclass(frozen=True)
class AgentRequest:
    template: TemplateRef
    machine: str  # full localpart
    principal: str  # full localpart
    secrets: dict[str, Secret]
    services: dict[str, ServiceRoute]
    services_where: str
    auto_start: bool = True


def matrix_route(creds: OperatorCredentials) -> ServiceRoute:
    """The built-in service: the homeserver, with the principal's own token."""
    return ServiceRoute(creds.homeserver_url, {"Authorization": MATRIX_TOKEN}, "Bearer")


def _services(
    creds: OperatorCredentials, request: AgentRequest, template_routes: dict[str, ServiceRoute]
) -> dict[str, ServiceRoute]:
    given = dict(request.services)
    for name in (MATRIX_SERVICE, *template_routes):
        if name in given:
            what = "built in" if name == MATRIX_SERVICE else "the template's"
            raise InputError(request.services_where, name, f"is {what}; choose another name")
    return {**template_routes, **given, MATRIX_SERVICE: matrix_route(creds)}


def _register(creds: OperatorCredentials, localpart: str) -> bool:
    """The principal's account, registered when missing (its password is thrown away:
    tokens come from the admin API). Returns whether it was created."""
    try:
        MatrixHTTP(creds.homeserver_url).register_with_token(
            localpart, Secret(random.token_hex(32)), creds.registration_token
        )
    except MatrixError as exc:
        if exc.errcode != "M_USER_IN_USE":
            raise
        return False
    return True


def _bundle_keys(
    admin: MatrixHTTP, creds: OperatorCredentials, request: AgentRequest
) -> tuple[str, ...]:
    """The credential names its published bundle holds (public); () without one."""
    room = config_room_of(admin, creds, request.machine)
    key = names.state_key(request.principal, creds.server_name)
    content = admin.get_state(room, rooms.CREDENTIALS, key)
    if not content:
        return ()
    try:
        return CredentialsEvent.from_json(content).keys
    except InputError:
        return ()


def create(
    creds: OperatorCredentials, request: AgentRequest, report: Callable[[str], None]
) -> None:
    admin = admin_client(creds)
    # Everything that can be checked is checked before anything is created.
    resolved = resolve(request.template, templates.fetcher(admin, creds)).template
    machine_public_key(admin, creds, request.machine)  # enrolled, key its own
    template_routes = {
        name: service.to_route(f"{request.template}: proxy_services: {name}")
        for name, service in resolved.proxy_services.items()
    }
    services = _services(creds, request, template_routes)
    published = _bundle_keys(admin, creds, request)
    # Nothing new given and a bundle with its token in place: that bundle stays.
    keep = not request.secrets and not request.services and MATRIX_TOKEN in published
    have = set(published) if keep else {MATRIX_TOKEN, *request.secrets}
    missing = sorted(set(resolved.required_credentials) - have)
    if missing:
        raise InputError(
            "--secrets-file", None, f"{request.template} requires {', '.join(missing)}"
        )
    user = names.user_id(request.principal, creds.server_name)
    if _register(creds, request.principal):
        report(f"registered {user}")
    if not keep:
        token = admin.login_as(user)
        provision(
            creds,
            CredentialRequest(
                machine=request.machine,
                principal=request.principal,
                services=services,
                secrets={**request.secrets, MATRIX_TOKEN: token},
                services_where=request.services_where,
            ),
        )
        report(f"provisioned {', '.join(sorted({MATRIX_TOKEN, *request.secrets}))} for {user}")
    if assignments.assign(
        creds,
        request.machine,
        request.principal,
        auto_start=request.auto_start,
        template=str(request.template),
    ):
        report(f"assigned {user} to {request.machine} from {request.template}")


@dataclass(frozen=True)
class Agent:
    principal: str
    machine: str
    template: str | None
    auto_start: bool
    keys: tuple[str, ...]  # credential names in its bundle, never values

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "machine": self.machine,
            "template": self.template,
            "auto_start": self.auto_start,
            "keys": list(self.keys),
        }


def list_agents(creds: OperatorCredentials, machine: str | None = None) -> list[Agent]:
    """Every assignment on the fleet's machines (or one), with what its bundle holds."""
    admin = admin_client(creds)
    wanted = [machine] if machine else [m.name for m in list_machines(creds) if m.state == ENROLLED]
    found = []
    for name in wanted:
        room = config_room_of(admin, creds, name)
        state = admin.room_state_events(room)
        key = names.state_key(name, creds.server_name)
        config = next(
            (e.get("content") for e in state if e.get("type") == rooms.MACHINE_CONFIG
             and e.get("state_key") == key),
            None,
        )  # fmt: skip
        bundles = {
            "@" + str(e.get("state_key")): e.get("content")
            for e in state
            if e.get("type") == rooms.CREDENTIALS and e.get("content")
        }
        for assignment in MachineConfig.from_json_each(config)[0].principals:
            keys: tuple[str, ...] = ()
            content = bundles.get(assignment.principal)
            if content:
                try:
                    keys = CredentialsEvent.from_json(content).keys
                except InputError:
                    keys = ()
            found.append(
                Agent(assignment.principal, name, assignment.template, assignment.auto_start, keys)
            )
    return sorted(found, key=lambda a: (a.principal, a.machine))


def destroy(creds: OperatorCredentials, principal: str, report: Callable[[str], None]) -> bool:
    """Unassign it everywhere, tombstone its bundles, deactivate its account."""
    admin = admin_client(creds)
    user = names.user_id(principal, creds.server_name)
    changed = False
    for record in list_machines(creds):
        room = admin.resolve_alias(names.room_alias(record.name, creds.server_name))
        if room is None:
            continue
        if assignments.unassign(creds, record.name, principal):
            report(f"unassigned from {record.name}")
            changed = True
        key = names.state_key(principal, creds.server_name)
        if admin.get_state(room, rooms.CREDENTIALS, key):
            admin.put_state(room, rooms.CREDENTIALS, key, {})
            report(f"credentials tombstoned on {record.name}")
            changed = True
    try:
        admin.deactivate_user(user)
        report(f"account {user} deactivated")
    except MatrixError as exc:
        if exc.status != 404:
            raise BureauError(f"deactivating {user}: {exc}") from None
    return changed
