"""`bureau matrix setup` and `bureau machine provision|list|assign|unassign`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bureau.cli import doctor_commands
from bureau.cli.common import (
    Subparsers,
    add_credential_file,
    load_credentials,
    machine_name,
    principal_name,
    say,
    valid,
)
from bureau.errors import InputError, UsageError
from bureau.files import atomic_write, read_secret_input
from bureau.operator import assignments, credentials, machines, templates
from bureau.operator.decommission import decommission
from bureau.operator.setup import setup
from bureau.template_resolve import resolve
from bureau.wire import names
from bureau.wire.files import DEFAULT_FLEET, validate_homeserver_url
from bureau.wire.machine_config import RESTART_POLICIES


def matrix_setup(args: argparse.Namespace) -> int:
    homeserver = valid(validate_homeserver_url, args.homeserver, "--homeserver")
    server = valid(names.validate_server_name, args.server_name, "--server-name")
    fleet = valid(names.validate_fleet, args.fleet, "--fleet")
    token = read_secret_input(args.registration_token_file, "--registration-token-file")
    changed = setup(
        homeserver=homeserver,
        server_name=server,
        registration_token=token,
        credential_file=args.credential_file,
        fleet=fleet,
        report=say,
    )
    if not changed:
        say(f"nothing to change: {fleet} on {server} is set up; {args.credential_file} is current")
    return 0


def machine_provision(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    machine = machine_name(creds, args.name, "NAME")
    output: Path | None = args.output
    if output is not None:
        if output.exists():
            raise InputError(str(output), None, "exists; remove it or choose another --output")
        if not output.parent.is_dir():
            raise InputError(str(output), None, "its directory does not exist (--output)")
    config = machines.provision(creds, machine)
    body = (json.dumps(config.to_json(), indent=2) + "\n").encode()
    if output is None:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        where = "stdout"
    else:
        atomic_write(output, body, 0o600)
        where = str(output)
    sys.stderr.write(
        f"provisioned {machine}; bootstrap config written to {where} (it holds a one-time "
        "password: move it to the machine and run bureau-launcher --bootstrap-file)\n"
    )
    return 0


def machine_list(args: argparse.Namespace) -> int:
    records = machines.list_machines(load_credentials(args))
    if args.json:
        say(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    rows = [("NAME", "STATE", "PUBLIC KEY", "LAST HEARTBEAT")]
    rows += [(r.name, r.state, r.public_key or "-", r.last_heartbeat or "-") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        say("  ".join([*cells, row[3]]))
    if not records:
        sys.stderr.write("no machines provisioned in this fleet\n")
    return 0


def machine_assign(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    machine = machine_name(creds, args.name, "NAME")
    principal = principal_name(creds, args.principal)
    overrides: dict[str, Any] = {}
    if args.template is not None:
        try:
            ref = templates.namespace_ref(creds, args.template)
        except ValueError as exc:
            raise UsageError(f"--template: {exc}") from None
        # A template that does not resolve (missing, a broken parent) is never assigned.
        resolve(ref, templates.fetcher(credentials.admin_client(creds), creds))
        overrides["template"] = str(ref)
    if args.restart_policy is not None:
        overrides["restart_policy"] = args.restart_policy
    changed = assignments.assign(
        creds, machine, principal, auto_start=not args.no_auto_start, **overrides
    )
    say(f"{'assigned' if changed else 'already assigned'}: {principal} on {machine}")
    return 0


def machine_unassign(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    machine = machine_name(creds, args.name, "NAME")
    principal = principal_name(creds, args.principal, to_run=False)
    changed = assignments.unassign(creds, machine, principal)
    say(f"{'unassigned' if changed else 'was not assigned'}: {principal} on {machine}")
    return 0


def machine_decommission(args: argparse.Namespace) -> int:
    creds = load_credentials(args)
    machine = machine_name(creds, args.name, "NAME")
    changed = decommission(creds, machine, report=say)
    say(f"{machine} is decommissioned" if changed else f"{machine} was already decommissioned")
    return 0


def register(groups: Subparsers) -> None:
    matrix = groups.add_parser("matrix", help="the fleet's Matrix accounts and rooms")
    matrix_cmds = matrix.add_subparsers(dest="command", metavar="ACTION", required=True)
    setup_cmd = matrix_cmds.add_parser(
        "setup", help="create the admin account, space and fleet rooms where missing"
    )
    setup_cmd.add_argument("--homeserver", required=True, help="homeserver URL")
    setup_cmd.add_argument("--server-name", required=True, help="Matrix server name")
    setup_cmd.add_argument(
        "--registration-token-file",
        required=True,
        help="file holding the registration token, or - for stdin",
    )
    setup_cmd.add_argument(
        "--credential-file",
        type=Path,
        required=True,
        help="operator credential file to write (0600)",
    )
    setup_cmd.add_argument("--fleet", default=DEFAULT_FLEET, help=f"default {DEFAULT_FLEET}")
    setup_cmd.set_defaults(handler=matrix_setup)
    doctor_commands.register_matrix(matrix_cmds)

    machine = groups.add_parser("machine", help="provision, list and assign fleet machines")
    cmds = machine.add_subparsers(dest="command", metavar="ACTION", required=True)
    prov = cmds.add_parser("provision", help="create a machine account and bootstrap.json")
    prov.add_argument("name", metavar="NAME", help="machine/NAME or bureau/fleet/F/machine/NAME")
    prov.add_argument("--output", type=Path, help="write bootstrap.json here (0600), not stdout")
    prov.set_defaults(handler=machine_provision)
    lst = cmds.add_parser("list", help="every provisioned machine and its state")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=machine_list)
    doctor_commands.register_machine(cmds)
    decom = cmds.add_parser(
        "decommission",
        help="tombstone the machine's key and credentials, remove it from every room, "
        "deactivate its account",
    )
    decom.add_argument("name", metavar="NAME", help="machine/NAME or bureau/fleet/F/machine/NAME")
    decom.set_defaults(handler=machine_decommission)
    assign = cmds.add_parser("assign", help="run a principal on the machine")
    assign.add_argument("--no-auto-start", action="store_true", help="assign, do not start")
    assign.add_argument("--template", help="template to run it from: NAME or a full ref")
    assign.add_argument(
        "--restart-policy", choices=RESTART_POLICIES, help="always (default), on-failure, never"
    )
    assign.set_defaults(handler=machine_assign)
    unassign = cmds.add_parser("unassign", help="stop running a principal on the machine")
    unassign.set_defaults(handler=machine_unassign)
    for sub in (assign, unassign):
        sub.add_argument("name", metavar="NAME", help="the machine: machine/NAME or full")
        sub.add_argument("--principal", required=True, help="agent/NAME or the full name")
    for sub in (prov, lst, decom, assign, unassign):
        add_credential_file(sub)
