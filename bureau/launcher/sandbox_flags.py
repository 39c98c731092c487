"""The flags that say how this machine hosts sandboxes: bureau-sandboxd's, and the
launcher's when it hosts them itself (no --sandbox-broker)."""

from __future__ import annotations

import argparse
import pwd
from pathlib import Path

from bureau.errors import UsageError
from bureau.launcher.sandbox_uids import DEFAULT_RANGE

FLAGS = ("--sandbox-uids", "--sandbox-dir", "--allow-host-network")


def add_arguments(parser: argparse.ArgumentParser, *, owner: str) -> None:
    """``owner``: who else's uid no sandbox may take besides root's ("the launcher's")."""
    parser.add_argument(
        "--sandbox-uids",
        metavar="FIRST-LAST",
        help="the uids sandboxes run as, one per principal (default "
        f"{'-'.join(map(str, DEFAULT_RANGE))}); none may be root's, {owner} or the daemon's",
    )
    parser.add_argument(
        "--sandbox-dir",
        type=Path,
        help="where principals' workspaces live, one 0700 directory each owned by its "
        "sandbox's uid (default: bureau-sandbox beside --state-dir); others must be able "
        "to pass through (o+x) every directory above it, as through --run-dir",
    )
    parser.add_argument(
        "--allow-host-network",
        action="store_true",
        help="let a template share the host's network (namespaces.net: false); by default "
        "a sandbox has loopback only and reaches out through its proxy alone",
    )


def given(args: argparse.Namespace) -> list[str]:
    """The sandbox flags given on the command line."""
    values = (args.sandbox_uids, args.sandbox_dir, args.allow_host_network or None)
    return [flag for flag, value in zip(FLAGS, values, strict=True) if value is not None]


def uid_range_text(args: argparse.Namespace) -> str:
    return args.sandbox_uids or "-".join(map(str, DEFAULT_RANGE))


def uid_of_user(value: str | None, flag: str) -> set[int]:
    """The uid a user flag names (a name or a number; none when not given), e.g. the
    daemon's, which no sandbox may take and the launcher's socket admits."""
    if value is None:
        return set()
    if value.isdigit():
        return {int(value)}
    try:
        return {pwd.getpwnam(value).pw_uid}
    except KeyError:
        raise UsageError(f"{flag}: no such user {value!r}") from None
