"""bureau-daemon: the unprivileged, network-facing process. It syncs the machine's rooms,
asks the launcher to start, swap and stop principals, and publishes heartbeats. It holds
the machine's Matrix session, never the key and never plaintext credentials."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bureau import log
from bureau.daemon.launcher_client import LauncherClient
from bureau.daemon.service import HEARTBEAT_SECONDS, Daemon
from bureau.edge import Parser, run
from bureau.errors import BureauError, LostStanding, UsageError
from bureau.launcher.server import SOCKET_NAME
from bureau.machine_state import load_session
from bureau.matrix.sync import MachineMatrix
from bureau.notify import Notifier
from bureau.wire import names
from bureau.wire.files import validate_homeserver_url

PROG = "bureau-daemon"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Sync the machine's rooms and keep its principals.")
    p.add_argument("--state-dir", type=Path, required=True, help="holds session.json")
    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path("/run/bureau"),
        help="where the launcher's socket is (default /run/bureau)",
    )
    p.add_argument("--machine-name", required=True, help="machine/NAME or the full name")
    p.add_argument("--homeserver", help="homeserver URL (default: the one in session.json)")
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=HEARTBEAT_SECONDS,
        help=f"seconds between heartbeats (default {HEARTBEAT_SECONDS:.0f})",
    )
    p.add_argument("--log-level", help="debug, info, warning, error ($BUREAU_LOG_LEVEL, info)")
    return p


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    notifier = Notifier()  # first: no child may inherit the notify socket
    try:
        log.configure(log.resolve_level(args.log_level), identifier=PROG)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None
    homeserver = None
    if args.homeserver is not None:
        try:
            homeserver = validate_homeserver_url(args.homeserver)
        except ValueError as exc:
            raise UsageError(f"--homeserver: {exc}") from None
    if not 1 <= args.heartbeat_interval <= 300:
        raise UsageError("--heartbeat-interval: between 1 and 300 seconds")
    session = load_session(args.state_dir)
    if session is None:
        raise BureauError(f"{args.state_dir}/session.json: missing; run the launcher's first boot")
    localpart, _ = names.parse_user_id(session.user_id)
    try:
        wanted = names.expand_entity(args.machine_name, names.fleet_of_entity(localpart), "machine")
    except names.InvalidName as exc:
        raise UsageError(f"--machine-name: {exc}") from None
    if wanted != localpart:
        raise UsageError(f"--machine-name: {wanted!r} is not this machine ({localpart!r})")
    logger = log.get(PROG).bind(machine=session.user_id)
    daemon = Daemon(
        matrix=MachineMatrix(session, homeserver),
        launcher=LauncherClient(args.run_dir / SOCKET_NAME),
        machine_user=session.user_id,
        log=logger,
        heartbeat_seconds=args.heartbeat_interval,
        notifier=notifier,
        run_dir=args.run_dir.absolute(),
        state_dir=args.state_dir,
    )
    try:
        code = asyncio.run(daemon.run())
    finally:
        notifier.close()
    if daemon.fatal is not None:
        raise LostStanding(f"{daemon.fatal}; every principal was stopped")
    return code


def main(argv: list[str] | None = None) -> None:
    run(PROG, lambda: _main(argv if argv is not None else sys.argv[1:]))
