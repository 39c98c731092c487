"""`bureau credentials provision|list`: principals' age-encrypted credentials."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
from bureau.operator import principal_credentials
from bureau.secret import Secret
from bureau.wire.credentials import parse_rfc3339
from bureau.wire.files import is_age_public_key
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


def credentials_provision(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    machine = machine_name(creds, args.machine, "--machine")
    principal = principal_name(creds, args.principal)
    if args.escrow_recipient is not None and not is_age_public_key(args.escrow_recipient):
        raise UsageError("--escrow-recipient: expected an age1... X25519 public key")
    if args.expires_at is not None:
        try:
            parse_rfc3339(args.expires_at)
        except ValueError as exc:
            raise UsageError(f"--expires-at: {exc}") from None
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


def credentials_list(args: argparse.Namespace) -> int:
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
        services = ", ".join(f"{n} -> {u}" for n, u in item["services"].items())
        expiry = f", expires {item['expires_at']}" if item["expires_at"] else ""
        say(
            f"{item['principal']}: keys {', '.join(item['keys'])}; {services}; "
            f"provisioned {item['provisioned_at']}{expiry}"
        )
    if not listed:
        sys.stderr.write(f"no credentials provisioned for {machine}\n")
    return 0


def register(groups: Subparsers) -> None:
    group = groups.add_parser("credentials", help="principals' encrypted credentials")
    cmds = group.add_subparsers(dest="command", metavar="ACTION", required=True)
    prov = cmds.add_parser("provision", help="encrypt credentials to a machine and publish them")
    prov.add_argument("--machine", required=True, help="machine/NAME or the full name")
    prov.add_argument("--principal", required=True, help="agent/NAME or the full name")
    prov.add_argument(
        "--services",
        type=Path,
        required=True,
        help="JSON: service -> {upstream_url, inject_headers, auth_scheme?, strip_headers?}",
    )
    prov.add_argument(
        "--secrets-file", default="-", help="KEY=VALUE lines: a 0600 file, or - for stdin (default)"
    )
    prov.add_argument("--escrow-recipient", help="also encrypt to this age1... public key")
    prov.add_argument("--expires-at", help="RFC 3339 time after which the proxy refuses it")
    prov.set_defaults(handler=credentials_provision)
    lst = cmds.add_parser("list", help="what is provisioned: names, never values")
    lst.add_argument("--machine", required=True, help="machine/NAME or the full name")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=credentials_list)
    for sub in (prov, lst):
        add_credential_file(sub)
