"""``bureau agent create|list|show|destroy``: a principal in one go, as upstream's agent
create does: its template checked, its own Matrix account, its credentials bundle (its
Matrix token plus the secrets given) and its assignment. Every step is skipped when done,
so running create again converges and an interrupted destroy is finished by running it
again.

The principal's Matrix token is a device of its own account: the homeserver's admin API
sets a fresh random password (logging out every earlier device, so an older bundle's token
dies), bureau logs in with it once and throws the password away. The operator keeps no
password for it, the token goes straight into the bundle, encrypted to the machine, and
deactivating the account (``destroy``) revokes it. In the sandbox the workload reaches
Matrix as itself through its proxy's ``matrix`` service, never holding the token."""

from __future__ import annotations

import secrets as random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bureau.errors import BureauError, InputError, MatrixError
from bureau.matrix.client import MatrixHTTP
from bureau.matrix.homeserver_admin import homeserver_admin
from bureau.operator import assignments, templates
from bureau.operator.credentials import admin_client
from bureau.operator.machines import ENROLLED, list_machines
from bureau.operator.principal_credentials import (
    CredentialRequest,
    config_room_of,
    machine_public_key,
    provision,
)
from bureau.secret import Secret
from bureau.template_resolve import resolve
from bureau.wire import names, rooms
from bureau.wire.credentials import CredentialsEvent
from bureau.wire.files import OperatorCredentials
from bureau.wire.machine_config import MachineConfig
from bureau.wire.service_route import ServiceRoute, referenced_credentials
from bureau.wire.template_parts import TemplateRef

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
    url = creds.homeserver_url.rstrip("/")  # as ServiceRoute.from_json keeps it
    return ServiceRoute(url, {"Authorization": MATRIX_TOKEN}, "Bearer")


def _services(
    creds: OperatorCredentials, request: AgentRequest, template_routes: dict[str, ServiceRoute]
) -> dict[str, ServiceRoute]:
    """The bundle's services. MATRIX_TOKEN is reserved: only the built-in route, to this
    hub, may inject it, so no template or services file can send the principal's Matrix
    identity anywhere else."""
    template_where = f"{request.template}: proxy_services"
    for where, routes in (
        (template_where, template_routes),
        (request.services_where, request.services),
    ):
        if MATRIX_SERVICE in routes:
            raise InputError(where, MATRIX_SERVICE, "is built in; choose another name")
        for name, route in routes.items():
            if MATRIX_TOKEN in route.inject_headers.values():
                raise InputError(
                    where, name, f"{MATRIX_TOKEN} goes only to the built-in matrix service"
                )
    for name in template_routes:
        if name in request.services:
            raise InputError(request.services_where, name, "is the template's; choose another name")
    return {**template_routes, **request.services, MATRIX_SERVICE: matrix_route(creds)}


def _register(admin: MatrixHTTP, creds: OperatorCredentials, localpart: str) -> str | None:
    """The principal's account: registered when missing, reactivated when an earlier
    destroy deactivated it (its password is thrown away either way: tokens come from the
    admin API). Returns what was done, if anything."""
    password = Secret(random.token_hex(32))
    try:
        MatrixHTTP(creds.homeserver_url).register_with_token(
            localpart, password, creds.registration_token
        )
    except MatrixError as exc:
        if exc.errcode != "M_USER_IN_USE":
            raise
    else:
        return "registered"
    user = names.user_id(localpart, creds.server_name)
    accounts = homeserver_admin(admin)
    if accounts.is_deactivated(user):
        accounts.reactivate(user, password)
        return "reactivated"
    return None


def mint_token(admin: MatrixHTTP, creds: OperatorCredentials, localpart: str) -> Secret:
    """A new access token on a new device of the principal's account (see above)."""
    password = Secret(random.token_hex(32))
    homeserver_admin(admin).reset_password(names.user_id(localpart, creds.server_name), password)
    login = MatrixHTTP(creds.homeserver_url).login_password(localpart, password)
    return login.access_token


def _published(
    admin: MatrixHTTP, creds: OperatorCredentials, request: AgentRequest
) -> CredentialsEvent | None:
    """Its published bundle, if one that reads (names and services are public)."""
    room = config_room_of(admin, creds, request.machine)
    key = names.state_key(request.principal, creds.server_name)
    content = admin.get_state(room, rooms.CREDENTIALS, key)
    if not content:
        return None
    try:
        return CredentialsEvent.from_json(content)
    except InputError:
        return None


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
    if MATRIX_TOKEN in request.secrets:
        raise InputError("--secrets-file", MATRIX_TOKEN, "is minted by bureau; leave it out")
    services = _services(creds, request, template_routes)
    published = _published(admin, creds, request)
    # Nothing new given, and the bundle in place has its token and every one of these
    # services as it is now: it stays (a template's new or changed service needs a new
    # bundle; services given to an earlier run are kept).
    keep = (
        not request.secrets
        and not request.services
        and published is not None
        and MATRIX_TOKEN in published.keys
        and all(published.services.get(name) == route for name, route in services.items())
    )
    have = set(published.keys) if keep and published else {MATRIX_TOKEN, *request.secrets}
    needed = set(resolved.required_credentials) | referenced_credentials(services)
    missing = sorted(needed - have)
    if missing:  # before anything exists
        raise InputError(
            "--secrets-file",
            None,
            f"{request.template} and its services need {', '.join(missing)}",
        )
    user = names.user_id(request.principal, creds.server_name)
    done = _register(admin, creds, request.principal)
    if done:
        report(f"{done} {user}")
    if not keep:
        token = mint_token(admin, creds, request.principal)
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
        homeserver_admin(admin).deactivate(user)
        report(f"account {user} deactivated")
    except MatrixError as exc:
        if exc.status != 404:
            raise BureauError(f"deactivating {user}: {exc}") from None
    return changed
