"""The operator CLI: ``bureau hub|matrix|machine|credentials ...``. Parsing and output live
in the command modules; the work is done in bureau.hub and bureau.operator."""

from __future__ import annotations

import argparse
import sys

from bureau import log
from bureau.cli import (
    agent_commands,
    credential_commands,
    fleet_commands,
    fleet_state_commands,
    hub_commands,
    operator_key_commands,
    template_commands,
)
from bureau.cli.common import Handler
from bureau.edge import Parser, run
from bureau.errors import UsageError
from bureau.profile import commands as profile_commands

PROG = "bureau"


LOG_LEVEL_HELP = "debug, info, warning, error ($BUREAU_LOG_LEVEL, info)"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Operate a Bureau fleet: the hub, its rooms, its machines.")
    p.add_argument("--log-level", help=LOG_LEVEL_HELP)
    groups = p.add_subparsers(dest="group", metavar="COMMAND", required=True, parser_class=Parser)
    hub_commands.register(groups)
    fleet_commands.register(groups)
    credential_commands.register(groups)
    template_commands.register(groups)
    agent_commands.register(groups)
    fleet_state_commands.register(groups)
    operator_key_commands.register(groups)
    profile_commands.register(groups)
    _log_level_everywhere(p)
    return p


def _log_level_everywhere(parser: argparse.ArgumentParser) -> None:
    """`bureau machine doctor --log-level debug` as well as `bureau --log-level debug
    machine doctor`: every command takes the flag where a user would type it."""
    # argparse has no public walk over its subcommands.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not sub._subparsers:  # a command, not a group
                    sub.add_argument("--log-level", default=argparse.SUPPRESS, help=LOG_LEVEL_HELP)
                _log_level_everywhere(sub)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        log.configure(log.resolve_level(args.log_level), identifier=PROG)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None
    handler: Handler = args.handler
    return handler(args)


def main(argv: list[str] | None = None) -> None:
    run(PROG, lambda: _main(argv if argv is not None else sys.argv[1:]))
