"""What the scale run publishes: one credentials event per machine
(bureau.operator.principal_credentials.provision, as `bureau credentials provision` does
for each machine's principal), or one fleet bundle for every machine.

The fleet bundle goes through bureau.operator.fleet_bundles.provision_fleet_bundle when
that module exists; until then through ``standin_fleet_bundle`` below, which publishes
the same event (bureau/wire/fleet_bundle.py): m.bureau.credentials in the fleet room,
state key NAME, principal "", encrypted for every chosen machine's published key plus the
escrow recipient, bound to ``fleet:NAME`` and signed by the operator."""

from __future__ import annotations

import importlib
import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bureau import age_keys
from bureau.errors import BureauError
from bureau.matrix.fleet_rooms import resolve_fleet_rooms
from bureau.operator import assignments
from bureau.operator.credentials import admin_client
from bureau.operator.principal_credentials import (
    MAX_CONTENT_BYTES,
    CredentialRequest,
    provision,
)
from bureau.operator.signed import sign_as
from bureau.secret import Secret
from bureau.wire import names, rooms
from bureau.wire.credentials import (
    ESCROW_RECIPIENT,
    CredentialsEvent,
    binding_digest,
    bundle_plaintext,
    rfc3339_now,
)
from bureau.wire.files import MachineKey, OperatorCredentials
from bureau.wire.fleet_bundle import (
    Shard,
    binding_principal,
    shard_key,
    signing_target,
)
from bureau.wire.service_route import ServiceRoute

BUNDLE = "scale-fleet"
# No proxy runs in the scale run: the route is only bound into the bundle.
ROUTE = ServiceRoute("http://127.0.0.1:9", {"Authorization": "TOKEN"}, "Bearer")
# The fleet bundle's credential and route: a name in both bundles would be refused.
FLEET_ROUTE = ServiceRoute("http://127.0.0.1:9", {"Authorization": "FLEET_TOKEN"}, "Bearer")
FLEET_SERVICES = {"fleet-api": FLEET_ROUTE}
CREDENTIAL_REF = "${FLEET_ROOM}:" + BUNDLE
THREADS = 4  # as simulated_fleet.py publishes its per-machine events


def principal_of(fleet: str, index: int) -> str:
    return f"{fleet}/agent/sim{index}"


def set_up_principals(creds: OperatorCredentials, machines: list[str], first: int,
                      value: str) -> None:  # fmt: skip
    """Each machine (localparts, indexes from ``first``) gets its principal's first
    credentials and its assignment (auto_start)."""

    def one(offset: int) -> None:
        index = first + offset
        publish_principal(creds, machines[offset], index, value)
        assignments.assign(creds, machines[offset], principal_of(creds.fleet, index),
                           auto_start=True)  # fmt: skip

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(len(machines))))


def publish_principal(creds: OperatorCredentials, machine: str, index: int, value: str) -> None:
    request = CredentialRequest(
        machine=machine,
        principal=principal_of(creds.fleet, index),
        services={"api": ROUTE},
        secrets={"TOKEN": Secret(value)},
        services_where="bench",
    )
    provision(creds, request)


def publish_per_machine(creds: OperatorCredentials, machines: list[str], value: str) -> float:
    """Leg (a): every machine's principal re-provisioned; seconds until the last returned."""
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: publish_principal(creds, machines[i], i, value),
                      range(len(machines))))  # fmt: skip
    return time.monotonic() - started


def real_fleet_api() -> Callable[..., Any] | None:
    """provision_fleet_bundle, once its module is committed (a module still being written
    in this checkout is not what the run should measure)."""
    committed = subprocess.run(
        ["git", "cat-file", "-e", "HEAD:bureau/operator/fleet_bundles.py"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, check=False,
    )  # fmt: skip
    if committed.returncode != 0:
        return None
    try:
        module = importlib.import_module("bureau.operator.fleet_bundles")
    except ImportError:
        return None
    found: Callable[..., Any] | None = getattr(module, "provision_fleet_bundle", None)
    return found


def standin_fleet_bundle(
    creds: OperatorCredentials, machines: list[str], secrets: dict[str, Secret],
    escrow_recipient: str, name: str = BUNDLE,
) -> list[str]:  # fmt: skip
    """One fleet bundle to ``machines`` (localparts), each key checked as sent by its
    machine, sharded if it does not fit one event; the state keys written."""
    admin = admin_client(creds)
    server = creds.server_name
    fleet_rooms = resolve_fleet_rooms(admin, creds.fleet, server)
    users = {names.user_id(m, server): names.state_key(m, server) for m in machines}
    keys: dict[str, str] = {}
    for event in admin.room_state_events(fleet_rooms.machine):
        key, sender = event.get("state_key"), event.get("sender")
        if event.get("type") != rooms.MACHINE_KEY or not event.get("content"):
            continue
        for user, state_key in users.items():
            if state_key == key and sender == user:
                keys[user] = MachineKey.from_json(event.get("content")).public_key
    missing = sorted(set(users) - set(keys))
    if missing:
        raise BureauError(f"no key published by {', '.join(missing[:3])}")
    fleet_room = names.fleet_room_localpart(creds.fleet)
    chosen = sorted(keys)
    for count in range(1, 257):
        size = -(-len(chosen) // count)
        contents = [
            _shard(creds, name, {u: keys[u] for u in chosen[i * size : (i + 1) * size]},
                   secrets, escrow_recipient, Shard(i, count), fleet_room)
            for i in range(count)
        ]  # fmt: skip
        if all(len(json.dumps(c, separators=(",", ":"))) <= MAX_CONTENT_BYTES for c in contents):
            break
    written = []
    for index, content in enumerate(contents):
        admin.put_state(fleet_rooms.fleet, rooms.CREDENTIALS, shard_key(name, index), content)
        written.append(shard_key(name, index))
    return written


def _shard(
    creds: OperatorCredentials, name: str, keys: dict[str, str], secrets: dict[str, Secret],
    escrow: str, shard: Shard, fleet_room: str,
) -> dict[str, Any]:  # fmt: skip
    bound = binding_principal(name)
    services = FLEET_SERVICES
    event = CredentialsEvent(
        principal="",
        encrypted_for=(*keys, ESCROW_RECIPIENT),
        keys=tuple(sorted(secrets)),
        ciphertext=age_keys.encrypt(
            bundle_plaintext(secrets, bound, services), [*keys.values(), escrow]
        ),
        provisioned_by=creds.admin_user,
        provisioned_at=rfc3339_now(),
        signature=binding_digest(bound, services),
        services=services,
    )
    content = event.to_json()
    if shard.count > 1:
        content["shard"] = shard.to_json()
    target = signing_target(fleet_room, creds.server_name, shard_key(name, shard.index))
    return sign_as(creds, rooms.CREDENTIALS, target, content)


def publish_fleet(
    creds: OperatorCredentials, machines: list[str], value: str, escrow: str
) -> tuple[float, list[str], str]:
    """Leg (b): one fleet bundle for ``machines``; (seconds, state keys written, which
    publisher: "bureau.operator.fleet_bundles" or "stand-in")."""
    secrets = {"FLEET_TOKEN": Secret(value)}
    real = real_fleet_api()
    started = time.monotonic()
    if real is None:
        written = standin_fleet_bundle(creds, machines, secrets, escrow)
        which = "stand-in"
    else:
        written = real(creds, fleet_request(secrets, escrow))
        which = "bureau.operator.fleet_bundles"
    return time.monotonic() - started, written, which


def fleet_request(secrets: dict[str, Secret], escrow: str) -> Any:
    """The real API's request, built from its module's request type."""
    module = importlib.import_module("bureau.operator.fleet_bundles")
    request_type = module.FleetBundleRequest
    # machines None: every enrolled machine, which is the whole simulated fleet.
    return request_type(name=BUNDLE, machines=None, services=FLEET_SERVICES,
                        services_where="bench", secrets=secrets,
                        escrow_recipient=escrow)  # fmt: skip
