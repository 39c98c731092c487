"""`bureau hub up|status|down`: the embedded Synapse."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bureau.cli.common import Subparsers, say, valid
from bureau.hub import Hub
from bureau.wire import names


def hub_up(args: argparse.Namespace) -> int:
    if args.server_name is not None:
        valid(names.validate_server_name, args.server_name, "--server-name")
    status, started = Hub(args.state_dir).up(port=args.port, server_name=args.server_name)
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
    return 0


def hub_down(args: argparse.Namespace) -> int:
    pid = Hub(args.state_dir).down()
    say("not running" if pid is None else f"stopped (pid {pid})")
    return 0


def register(groups: Subparsers) -> None:
    hub = groups.add_parser("hub", help="the embedded Synapse homeserver (127.0.0.1 only)")
    cmds = hub.add_subparsers(dest="command", metavar="ACTION", required=True)
    up = cmds.add_parser("up", help="start the hub (generating it once) and print its URL")
    up.add_argument("--port", type=int, help="listen port on 127.0.0.1 (default 8008)")
    up.add_argument("--server-name", help="Matrix server name (default bureau.local)")
    up.set_defaults(handler=hub_up)
    status = cmds.add_parser("status", help="print whether the hub runs (exit 3 when stopped)")
    status.set_defaults(handler=hub_status)
    down = cmds.add_parser("down", help="stop the process `hub up` started")
    down.set_defaults(handler=hub_down)
    for sub in (up, status, down):
        sub.add_argument("--state-dir", type=Path, required=True, help="the hub's directory")
