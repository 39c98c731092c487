"""`bureau hub up|status|down`: the embedded Synapse, on SQLite or PostgreSQL, with coturn
beside it when asked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bureau.cli.common import Subparsers, say, valid
from bureau.errors import UsageError
from bureau.hub import DATABASES, Hub, HubStatus
from bureau.hub_turn import DEFAULT_TURN_PORT
from bureau.wire import names


def hub_up(args: argparse.Namespace) -> int:
    if args.server_name is not None:
        valid(names.validate_server_name, args.server_name, "--server-name")
    turn_port = args.turn_port
    if turn_port is not None and not 0 < turn_port < 65536:
        raise UsageError(f"--turn-port: {turn_port} is not a port number")
    if args.turn and turn_port is None:
        turn_port = DEFAULT_TURN_PORT
    status, started = Hub(args.state_dir).up(
        port=args.port, server_name=args.server_name, database=args.database, turn_port=turn_port
    )
    if not started:
        sys.stderr.write(f"hub already running (pid {status.pid})\n")
    say(status.url)
    return 0


def hub_status(args: argparse.Namespace) -> int:
    status = Hub(args.state_dir).status()
    if status is None:
        say("stopped")
        return 3  # LSB: program is not running
    say(f"running {status.url} server_name={status.server_name} pid={status.pid}")
    for line in _parts(status):
        say(line)
    return 0 if status.whole else 1  # LSB 1: a part of it is dead


def _parts(status: HubStatus) -> list[str]:
    lines = []
    if status.database == "postgresql":
        lines.append(f"database postgresql {_running(status.database_pid)}")
    else:
        lines.append("database sqlite")
    if status.turn_address is not None:
        lines.append(f"turn {status.turn_address} udp+tcp {_running(status.turn_pid)}")
    return lines


def _running(pid: int | None) -> str:
    return "stopped" if pid is None else f"running pid={pid}"


def hub_down(args: argparse.Namespace) -> int:
    stopped = Hub(args.state_dir).down()
    if not stopped:
        say("not running")
        return 0
    if "synapse" in stopped:
        say(f"stopped (pid {stopped.pop('synapse')})")
    for name, pid in stopped.items():
        say(f"stopped {name} (pid {pid})")
    return 0


def register(groups: Subparsers) -> None:
    hub = groups.add_parser("hub", help="the embedded Synapse homeserver (127.0.0.1 only)")
    cmds = hub.add_subparsers(dest="command", metavar="ACTION", required=True)
    up = cmds.add_parser("up", help="start the hub (generating it once) and print its URL")
    up.add_argument("--port", type=int, help="listen port on 127.0.0.1 (default 8008)")
    up.add_argument("--server-name", help="Matrix server name (default bureau.local)")
    up.add_argument(
        "--database",
        choices=DATABASES,
        help="Synapse's database, chosen when the hub is generated (default sqlite): "
        "postgresql runs a PostgreSQL server of the hub's own on a Unix socket",
    )
    up.add_argument(
        "--turn",
        action="store_true",
        help="also run coturn on 127.0.0.1, its credentials minted by Synapse "
        "(/_matrix/client/v3/voip/turnServer); stays on once turned on",
    )
    up.add_argument(
        "--turn-port",
        type=int,
        metavar="PORT",
        help=f"coturn's port on 127.0.0.1 (default {DEFAULT_TURN_PORT}); implies --turn",
    )
    up.set_defaults(handler=hub_up)
    status = cmds.add_parser(
        "status", help="print whether the hub and its parts run (exit 3 stopped, 1 part down)"
    )
    status.set_defaults(handler=hub_status)
    down = cmds.add_parser("down", help="stop the processes `hub up` started")
    down.set_defaults(handler=hub_down)
    for sub in (up, status, down):
        sub.add_argument("--state-dir", type=Path, required=True, help="the hub's directory")
