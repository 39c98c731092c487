"""`bureau credentials provision|list|reseal`: principals' age-encrypted credentials, and
fleet bundles (one bundle for many machines, in the fleet room)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bureau.cli.common import (
    Subparsers,
    add_credential_file,
    load_credentials,
    machine_name,
    principal_name,
    say,
)
from bureau.errors import InputError, UsageError
from bureau.files import env_lines, read_private_bytes, read_private_file
from bureau.operator import fleet_bundles, fleet_reseal, principal_credentials
from bureau.secret import Secret
from bureau.wire.credentials import parse_rfc3339, rfc3339_now
from bureau.wire.files import OperatorCredentials, is_age_public_key
from bureau.wire.fleet_bundle import check_bundle_name
from bureau.wire.route_checks import has_control_character, valid_credential_name
from bureau.wire.service_route import parse_services


def read_secrets(path: str, *, allow_empty: bool = False) -> dict[str, Secret]:
    """KEY=VALUE lines from a private file or stdin; never from argv."""
    if path == "-":
        where = "--secrets-file (stdin)"
        # Bytes, not text mode: universal newlines would turn a CR inside a value into a
        # line break instead of letting it be refused below.
        try:
            text = sys.stdin.buffer.read(1 << 20).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(where, None, "is not UTF-8 text") from None
    else:
        text, where = read_private_file(Path(path)), path
    return parse_secrets(text, where, allow_empty=allow_empty)


def parse_secrets(text: str, where: str, *, allow_empty: bool = False) -> dict[str, Secret]:
    """NAME=VALUE lines (files.env_lines), each a credential name and a non-empty
    single-line value. Errors name the line, never its name or value: a pasted base64
    token (``dG9rZW4=``) parses as a name and an empty value, or a value of ``=``."""
    secrets: dict[str, Secret] = {}
    rule = "at most 128 letters, digits, _, . and - (not starting bureau.)"
    for at, name, value in env_lines(text, where, valid_name=valid_credential_name, names=rule):
        if not value.strip("="):
            raise InputError(where, at, "has no value (a pasted base64 token? write NAME=token)")
        if has_control_character(value):
            raise InputError(where, at, "the value contains a control character (CR, NUL, ...)")
        secrets[name] = Secret(value)
    if not secrets and not allow_empty:
        raise InputError(where, None, "holds no NAME=VALUE lines")
    return secrets


def read_services(path: Path) -> object:
    """A services file: JSON, a regular file (a FIFO is refused at once)."""
    raw = read_private_bytes(Path(path), 1 << 20, private=False)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(str(path), None, f"not JSON ({type(exc).__name__})") from None


def _checked_escrow_and_expiry(args: argparse.Namespace) -> None:
    if args.escrow_recipient is not None and not is_age_public_key(args.escrow_recipient):
        raise UsageError("--escrow-recipient: expected an age1... X25519 public key")
    if args.expires_at is not None:
        try:
            parse_rfc3339(args.expires_at)
        except ValueError as exc:
            raise UsageError(f"--expires-at: {exc}") from None


def credentials_provision(args: argparse.Namespace) -> int:
    if args.fleet_bundle is not None:
        return _provision_fleet_bundle(args)
    if args.machines is not None:
        raise UsageError("--machines: only with --fleet-bundle (one machine: --machine)")
    for flag in ("machine", "principal", "services"):
        if getattr(args, flag) is None:
            raise UsageError(f"--{flag}: required (or --fleet-bundle NAME --machines ...)")
    creds = load_credentials(args)
    machine = machine_name(creds, args.machine, "--machine")
    principal = principal_name(creds, args.principal)
    _checked_escrow_and_expiry(args)
    services_where = str(args.services)
    request = principal_credentials.CredentialRequest(
        machine=machine,
        principal=principal,
        services=parse_services(read_services(args.services), services_where),
        secrets=read_secrets(args.secrets_file),
        services_where=services_where,
        escrow_recipient=args.escrow_recipient,
        expires_at=args.expires_at,
    )
    event = principal_credentials.provision(creds, request)
    say(
        f"provisioned {', '.join(event.keys)} for {event.principal} on {machine} "
        f"(services: {', '.join(sorted(event.services))})"
    )
    return 0


def _machines(creds: OperatorCredentials, value: str | None) -> tuple[str, ...] | None:
    """``--machines all|M1,M2,...``: None for all, else full localparts in order."""
    if value is None:
        raise UsageError("--machines: required with --fleet-bundle (all, or M1,M2,...)")
    if value == "all":
        return None
    parts = [p.strip() for p in value.split(",")]
    if not all(parts):
        raise UsageError("--machines: an empty name in the list (all, or M1,M2,...)")
    return tuple(dict.fromkeys(machine_name(creds, p, "--machines") for p in parts))


def _provision_fleet_bundle(args: argparse.Namespace) -> int:
    if args.machine is not None or args.principal is not None:
        raise UsageError(
            "--fleet-bundle: not with --machine or --principal (name its machines with --machines)"
        )
    name = check_bundle_name(args.fleet_bundle, "--fleet-bundle")
    creds = load_credentials(args)
    machines = _machines(creds, args.machines)
    if args.escrow_recipient is None:
        raise UsageError(
            "--escrow-recipient: required for a fleet bundle (without it no one can reseal "
            "it when machines join or leave)"
        )
    _checked_escrow_and_expiry(args)
    services_where = str(args.services) if args.services is not None else "--services"
    services = {}
    if args.services is not None:
        services = parse_services(read_services(args.services), services_where)
    request = fleet_bundles.FleetBundleRequest(
        name=name,
        machines=machines,
        secrets=read_secrets(args.secrets_file),
        services=services,
        services_where=services_where,
        escrow_recipient=args.escrow_recipient,
        expires_at=args.expires_at,
    )
    keys = fleet_bundles.provision_fleet_bundle(creds, request)
    who = "every enrolled machine" if machines is None else f"{len(machines)} machines"
    say(
        f"provisioned fleet bundle {name} ({', '.join(sorted(request.secrets))}) for {who} "
        f"and the escrow recipient, in {len(keys)} event{'s' if len(keys) > 1 else ''}: "
        f"{', '.join(keys)}"
    )
    return 0


def credentials_list(args: argparse.Namespace) -> int:
    if args.fleet_bundles:
        if args.machine is not None:
            raise UsageError("--fleet-bundles: not with --machine (they live in the fleet room)")
        return _list_fleet_bundles(args)
    if args.machine is None:
        raise UsageError("--machine: required (or --fleet-bundles)")
    creds = load_credentials(args)
    machine = machine_name(creds, args.machine, "--machine")
    listed = principal_credentials.list_credentials(creds, machine)
    if args.json:
        say(json.dumps(listed, indent=2))
        return 0
    for item in listed:
        if "invalid" in item:
            say(f"{item['state_key']}: invalid: {item['invalid']}")
            continue
        keys, services, when = _described(item)
        say(f"{item['principal']}: {keys}; {services}; {when}")
    if not listed:
        sys.stderr.write(f"no credentials provisioned for {machine}\n")
    return 0


def _described(item: dict[str, Any]) -> tuple[str, str, str]:
    """A listed bundle's keys, routes and times, as both listings show them (no values)."""
    services = ", ".join(f"{n} -> {u}" for n, u in item["services"].items())
    expiry = f", expires {item['expires_at']}" if item["expires_at"] else ""
    return (
        f"keys {', '.join(item['keys'])}",
        services,
        f"provisioned {item['provisioned_at']}{expiry}",
    )


def _list_fleet_bundles(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    listed = fleet_bundles.list_fleet_bundles(creds)
    if args.json:
        say(json.dumps(listed, indent=2))
        return 0
    for item in listed:
        if "invalid" in item:
            say(f"{item['name']}: invalid: {item['invalid']}")
            continue
        keys, services, when = _described(item)
        escrow = "" if item["escrow"] else "; NO ESCROW (cannot be resealed)"
        shards = f"{item['shards']} shard{'s' if item['shards'] > 1 else ''}"
        machines = f"machines {item['machines']}: {item['recipients']} in {shards}"
        say(f"{item['name']}: {keys}; {services or 'no services'}; {machines}{escrow}; {when}")
    if not listed:
        sys.stderr.write(f"no fleet bundles in {creds.fleet}\n")
    return 0


def read_identity(path: str) -> Secret:
    """The escrow identity: an age identity file (0600) or stdin; never argv or env."""
    if path == "-":
        where = "--escrow-identity (stdin)"
        try:
            text = sys.stdin.buffer.read(1 << 16).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(where, None, "is not UTF-8 text") from None
    else:
        text, where = read_private_file(Path(path), 1 << 16), path
    return fleet_reseal.parse_identity(text, where)


def credentials_reseal(args: argparse.Namespace) -> int:
    if args.watch and args.dry_run:
        raise UsageError("--dry-run: not with --watch (a dry run is one pass)")
    creds = load_credentials(args)
    escrow = read_identity(args.escrow_identity)
    if args.watch:
        stopped = fleet_reseal.watch(creds, escrow, say)
        say(f"{rfc3339_now()} reseal --watch: stopped by {stopped}")
        return 0
    started = time.monotonic()
    changes = fleet_reseal.reseal(creds, escrow, dry_run=args.dry_run)
    for change in changes:
        say(("would: " if args.dry_run and change.changed else "") + change.line())
    say(fleet_reseal.summary(changes, time.monotonic() - started, dry_run=args.dry_run))
    failed = [c.name for c in changes if c.error is not None]
    if failed:
        sys.stderr.write(f"bureau: not resealed: {', '.join(failed)} (reasons above)\n")
        return 1
    return 0


def register(groups: Subparsers) -> None:
    group = groups.add_parser("credentials", help="principals' encrypted credentials")
    cmds = group.add_subparsers(dest="command", metavar="ACTION", required=True)
    prov = cmds.add_parser(
        "provision", help="encrypt credentials to a machine (or a fleet bundle) and publish them"
    )
    prov.add_argument("--machine", help="machine/NAME or the full name")
    prov.add_argument("--principal", help="agent/NAME or the full name")
    prov.add_argument(
        "--fleet-bundle",
        metavar="NAME",
        help="instead of --machine/--principal: one bundle in the fleet room for --machines",
    )
    prov.add_argument(
        "--machines",
        metavar="all|M1,M2,...",
        help="with --fleet-bundle: every enrolled machine (now and as they enroll, through "
        "reseal), or these",
    )
    prov.add_argument(
        "--services",
        type=Path,
        help="JSON: service -> {upstream_url, inject_headers, auth_scheme?, strip_headers?} "
        "(required for a principal; a fleet bundle may have none)",
    )
    prov.add_argument(
        "--secrets-file", default="-", help="KEY=VALUE lines: a 0600 file, or - for stdin (default)"
    )
    prov.add_argument(
        "--escrow-recipient",
        help="also encrypt to this age1... public key (required for a fleet bundle)",
    )
    prov.add_argument("--expires-at", help="RFC 3339 time after which the proxy refuses it")
    prov.set_defaults(handler=credentials_provision)
    lst = cmds.add_parser("list", help="what is provisioned: names, never values")
    lst.add_argument("--machine", help="machine/NAME or the full name")
    lst.add_argument(
        "--fleet-bundles", action="store_true", help="the fleet room's bundles instead"
    )
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=credentials_list)
    res = cmds.add_parser(
        "reseal", help="re-encrypt every fleet bundle to the machines enrolled now"
    )
    res.add_argument(
        "--escrow-identity",
        required=True,
        metavar="FILE|-",
        help="the escrow recipient's age identity: a 0600 file, or - for stdin",
    )
    res.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    res.add_argument(
        "--watch", action="store_true", help="keep resealing as machines enroll and leave"
    )
    res.set_defaults(handler=credentials_reseal)
    for sub in (prov, lst, res):
        add_credential_file(sub)
