"""`bureau machine doctor` and `bureau matrix doctor`: one line per check, what is wrong
and what fixes it; --fix applies every fix it can and checks again; exit 0 only when
every check passes."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bureau.cli.common import Subparsers, add_credential_file, load_credentials, say
from bureau.cli.operator_key_commands import read_public_key
from bureau.doctor.findings import Report
from bureau.doctor.machine import machine_doctor


def _print(report: Report, as_json: bool) -> int:
    if as_json:
        say(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            say(line)
    return 0 if report.passed else 1


def machine_doctor_command(args: argparse.Namespace) -> int:
    report = machine_doctor(
        root=args.root,
        apply_fixes=args.fix,
        start_services=not args.no_start,
        nix_conf_dir=os.environ.get("NIX_CONF_DIR"),
        operator_key=read_public_key(args.operator_key, "--operator-key")
        if args.operator_key
        else None,
    )
    return _print(report, args.json)


def matrix_doctor_command(args: argparse.Namespace) -> int:
    from bureau.doctor.matrix import matrix_doctor  # noqa: PLC0415 -- operator-side only

    creds = load_credentials(args)  # a bad file or --fleet is one line before any check
    return _print(matrix_doctor(args.credential_file, args.fix, creds.fleet), args.json)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fix", action="store_true", help="apply every fix it can, then check again"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def register_machine(cmds: Subparsers) -> None:
    doctor = cmds.add_parser(
        "doctor",
        help="check this machine: user, directories, units, key, session, cache, sockets",
        description="Check this machine's Bureau installation. Run as root.",
    )
    _common(doctor)
    doctor.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="prefix for every filesystem path (default /); systemd checks are n/a elsewhere",
    )
    doctor.add_argument(
        "--no-start",
        action="store_true",
        help="the services are not meant to run yet: enable them, do not start them, "
        "do not expect their sockets",
    )
    doctor.add_argument(
        "--operator-key",
        type=Path,
        metavar="FILE",
        help="the operator's public key (the .pub beside its credential file): checked to be "
        "pinned, and with --fix pinned here (machines enrolled before signatures pin none)",
    )
    doctor.set_defaults(handler=machine_doctor_command)


def register_matrix(cmds: Subparsers) -> None:
    doctor = cmds.add_parser(
        "doctor",
        help="check the fleet's rooms, memberships, power levels and the admin session",
    )
    _common(doctor)
    add_credential_file(doctor)
    doctor.set_defaults(handler=matrix_doctor_command)
