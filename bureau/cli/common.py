"""What every `bureau` subcommand shares: output, flag validation, name expansion."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bureau.errors import UsageError
from bureau.operator import credentials
from bureau.wire import names
from bureau.wire.files import DEFAULT_FLEET, OperatorCredentials

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction is private


def say(line: str) -> None:
    print(line, flush=True)


def valid(check: Callable[[str], str], value: str, flag: str) -> str:
    try:
        return check(value)
    except ValueError as exc:  # InvalidName is a ValueError
        raise UsageError(f"{flag}: {exc}") from None


def machine_name(creds: OperatorCredentials, value: str, flag: str) -> str:
    return valid(lambda n: names.expand_entity(n, creds.fleet, "machine"), value, flag)


def principal_name(
    creds: OperatorCredentials, value: str, *, to_run: bool = True, flag: str = "--principal"
) -> str:
    """``to_run``: the name must also have a proxy socket of its own (provision, assign);
    unassign takes any name, so that a bad assignment can always be removed."""

    def check(name: str) -> str:
        full = names.expand_entity(name, creds.fleet)
        if full.split("/")[3] == "machine":
            # As the launcher refuses them: a machine's account is not a principal's.
            raise names.InvalidName(f"{full!r} is a machine, not a principal")
        return names.check_socket_name(full) if to_run else full

    return valid(check, value, flag)


def add_credential_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--credential-file",
        type=Path,
        required=True,
        help="operator credential file from `bureau matrix setup` (ours or upstream's)",
    )
    parser.add_argument(
        "--fleet",
        help="the fleet to act on (default: the credential file's BUREAU_FLEET, else "
        f"{DEFAULT_FLEET}; upstream's credential file names none)",
    )


def load_credentials(args: argparse.Namespace) -> OperatorCredentials:
    """The credential file of ``add_credential_file``'s flags, with --fleet applied."""
    fleet = valid(names.validate_fleet, args.fleet, "--fleet") if args.fleet else None
    return credentials.load(args.credential_file, fleet)
