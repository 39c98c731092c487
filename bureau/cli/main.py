"""The operator CLI: ``bureau hub|matrix|machine ...``. Argument parsing and output only;
the work is done in bureau.hub and bureau.operator."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from bureau import log, names
from bureau.edge import Parser, run
from bureau.errors import BureauError, InputError, UsageError
from bureau.files import atomic_write, read_secret_input
from bureau.hub import Hub
from bureau.operator import credentials, machines
from bureau.operator.setup import setup
from bureau.schema import validate_homeserver_url

PROG = "bureau"
DEFAULT_FLEET = "bureau/fleet/prod"
Handler = Callable[[argparse.Namespace], int]


def _say(line: str) -> None:
    print(line, flush=True)


# -- hub ------------------------------------------------------------------------------


def hub_up(args: argparse.Namespace) -> int:
    if args.server_name is not None:
        _valid(names.validate_server_name, args.server_name, "--server-name")
    status, started = Hub(args.state_dir).up(port=args.port, server_name=args.server_name)
    if not started:
        sys.stderr.write(f"hub already running (pid {status.pid})\n")
    _say(status.url)
    return 0


def hub_status(args: argparse.Namespace) -> int:
    status = Hub(args.state_dir).status()
    if status is None:
        _say("stopped")
        return 3  # LSB: program is not running
    _say(f"running {status.url} server_name={status.server_name} pid={status.pid}")
    return 0


def hub_down(args: argparse.Namespace) -> int:
    pid = Hub(args.state_dir).down()
    _say("not running" if pid is None else f"stopped (pid {pid})")
    return 0


# -- matrix ---------------------------------------------------------------------------


def matrix_setup(args: argparse.Namespace) -> int:
    homeserver = _valid(validate_homeserver_url, args.homeserver, "--homeserver")
    server = _valid(names.validate_server_name, args.server_name, "--server-name")
    fleet = _valid(names.validate_fleet, args.fleet, "--fleet")
    token = read_secret_input(args.registration_token_file, "--registration-token-file")
    changed = setup(
        homeserver=homeserver,
        server_name=server,
        registration_token=token,
        credential_file=args.credential_file,
        fleet=fleet,
        report=_say,
    )
    if not changed:
        _say(f"nothing to change: {fleet} on {server} is set up; {args.credential_file} is current")
    return 0


# -- machine --------------------------------------------------------------------------


def machine_provision(args: argparse.Namespace) -> int:
    creds = credentials.load(args.credential_file)
    machine = _valid(lambda n: names.expand_entity(n, creds.fleet, "machine"), args.name, "NAME")
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
    records = machines.list_machines(credentials.load(args.credential_file))
    if args.json:
        _say(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    rows = [("NAME", "STATE", "PUBLIC KEY", "LAST HEARTBEAT")]
    rows += [(r.name, r.state, r.public_key or "-", r.last_heartbeat or "-") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        _say(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    if not records:
        sys.stderr.write("no machines provisioned in this fleet\n")
    return 0


# -- parser ---------------------------------------------------------------------------


def _valid(check: Callable[[str], str], value: str, flag: str) -> str:
    try:
        return check(value)
    except ValueError as exc:  # InvalidName is a ValueError
        raise UsageError(f"{flag}: {exc}") from None


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Operate a Bureau fleet: the hub, its rooms, its machines.")
    p.add_argument("--log-level", help="debug, info, warning, error ($BUREAU_LOG_LEVEL, info)")
    groups = p.add_subparsers(dest="group", metavar="COMMAND", required=True, parser_class=Parser)

    hub = groups.add_parser("hub", help="the embedded Synapse homeserver (127.0.0.1 only)")
    hub_cmds = hub.add_subparsers(dest="command", metavar="ACTION", required=True)
    up = hub_cmds.add_parser("up", help="start the hub (generating it once) and print its URL")
    up.add_argument("--port", type=int, help="listen port on 127.0.0.1 (default 8008)")
    up.add_argument("--server-name", help="Matrix server name (default bureau.local)")
    up.set_defaults(handler=hub_up)
    st = hub_cmds.add_parser("status", help="print whether the hub runs (exit 3 when stopped)")
    st.set_defaults(handler=hub_status)
    down = hub_cmds.add_parser("down", help="stop the process `hub up` started")
    down.set_defaults(handler=hub_down)
    for sub in (up, st, down):
        sub.add_argument("--state-dir", type=Path, required=True, help="the hub's directory")

    matrix = groups.add_parser("matrix", help="the fleet's Matrix accounts and rooms")
    matrix_cmds = matrix.add_subparsers(dest="command", metavar="ACTION", required=True)
    setup_cmd = matrix_cmds.add_parser(
        "setup", help="create the admin account, space and fleet rooms where missing"
    )
    setup_cmd.add_argument("--homeserver", required=True, help="homeserver URL")
    setup_cmd.add_argument("--server-name", required=True, help="Matrix server name")
    setup_cmd.add_argument("--registration-token-file", required=True,
                       help="file holding the registration token, or - for stdin")  # fmt: skip
    setup_cmd.add_argument("--credential-file", type=Path, required=True,
                       help="operator credential file to write (0600)")  # fmt: skip
    setup_cmd.add_argument("--fleet", default=DEFAULT_FLEET, help=f"default {DEFAULT_FLEET}")
    setup_cmd.set_defaults(handler=matrix_setup)

    machine = groups.add_parser("machine", help="provision and list fleet machines")
    machine_cmds = machine.add_subparsers(dest="command", metavar="ACTION", required=True)
    prov = machine_cmds.add_parser("provision", help="create a machine account and bootstrap.json")
    prov.add_argument("name", metavar="NAME", help="machine/NAME or bureau/fleet/F/machine/NAME")
    prov.add_argument("--output", type=Path, help="write bootstrap.json here (0600), not stdout")
    prov.set_defaults(handler=machine_provision)
    lst = machine_cmds.add_parser("list", help="every provisioned machine and its state")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=machine_list)
    for sub in (prov, lst):
        sub.add_argument("--credential-file", type=Path, required=True,
                         help="operator credential file from `bureau matrix setup`")  # fmt: skip
    return p


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        log.configure(log.resolve_level(args.log_level))
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None
    handler: Handler = args.handler
    return handler(args)


def main(argv: list[str] | None = None) -> None:
    run(PROG, lambda: _main(argv if argv is not None else sys.argv[1:]))


__all__ = ["BureauError", "main"]
