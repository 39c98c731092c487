"""The operator CLI: ``bureau hub|matrix|machine|credentials ...``. Parsing and output live
in the command modules; the work is done in bureau.hub and bureau.operator."""

from __future__ import annotations

import sys

from bureau import log
from bureau.cli import credential_commands, fleet_commands, hub_commands
from bureau.cli.common import Handler
from bureau.edge import Parser, run
from bureau.errors import UsageError

PROG = "bureau"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Operate a Bureau fleet: the hub, its rooms, its machines.")
    p.add_argument("--log-level", help="debug, info, warning, error ($BUREAU_LOG_LEVEL, info)")
    groups = p.add_subparsers(dest="group", metavar="COMMAND", required=True, parser_class=Parser)
    hub_commands.register(groups)
    fleet_commands.register(groups)
    credential_commands.register(groups)
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
