"""bureau-launcher: the privileged, minimal process that holds the machine's key.

This file and what it imports are the launcher's audit surface: standard library,
structlog, pyrage (through bureau.age_keys) and bureau's pure modules; never aiohttp or
matrix-nio (a test checks the import closure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bureau import key_store, log
from bureau.edge import Parser, raise_interrupted_on_signals, run
from bureau.errors import BureauError, InputError, UsageError
from bureau.files import (
    check_owned_dir,
    check_owned_tree,
    make_dirs,
    remove_stale_temporaries,
)
from bureau.hardening import clear_ambient_capabilities, no_dumps
from bureau.launcher import first_boot, operator_trust, sandbox_flags, server
from bureau.launcher.proxy_kind import Unbound
from bureau.launcher.sandbox_uids import parse_range
from bureau.launcher.supervisor import SandboxOptions
from bureau.machine_state import load_session, session_path
from bureau.notify import Notifier
from bureau.wire import names
from bureau.wire.files import Session

PROG = "bureau-launcher"
FIRST_BOOT_STEP_SECONDS = 60
HOMESERVER_WAIT_SECONDS = 600
# What the launcher keeps under its run dir: adoption records, and the proxies' sockets.
RUN_DIR_PARTS = ("launcher", "fleet", "sandbox")
# The registration-token first boot, removed: it made the launcher hold the hub's root
# secret and log in as its admin. Named, so that an old unit or script fails saying so.
REMOVED_FLAGS = ("--registration-token-file", "--homeserver", "--server-name", "--fleet")


class _Removed(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        del namespace, values
        parser.error(
            f"{option_string}: the registration-token first boot was removed; provision the "
            "machine with `bureau machine provision` and start the launcher with "
            "--bootstrap-file"
        )


def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Holds the machine key; performs first boot; serves the daemon.",
        epilog="First boot: --bootstrap-file (from `bureau machine provision`). "
        "Later starts need only --machine-name and --state-dir.",
    )
    p.add_argument(
        "--machine-name",
        required=True,
        help="machine/NAME, or the full name bureau/fleet/FLEET/machine/NAME",
    )
    p.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="holds session.json and the machine key (created 0700)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path("/run/bureau"),
        help="runtime directory for sockets (default /run/bureau)",
    )
    p.add_argument(
        "--bootstrap-file",
        type=Path,
        help="bootstrap.json from `bureau machine provision`; deleted after first boot",
    )
    p.add_argument(
        "--first-boot-only", action="store_true", help="exit 0 once first boot is complete"
    )
    p.add_argument(
        "--key-storage",
        choices=[s.value for s in key_store.KeyStorage],
        default="auto",
        help="where a newly generated private key rests (default auto: "
        "systemd-creds when it works here, else plain)",
    )
    p.add_argument(
        "--homeserver-wait",
        type=float,
        default=HOMESERVER_WAIT_SECONDS,
        metavar="SECONDS",
        help="how long first boot keeps retrying a homeserver that is unreachable, failing "
        f"(5xx) or rate-limiting before it exits 1 (default {HOMESERVER_WAIT_SECONDS}; "
        "0: no retries)",
    )
    for flag in REMOVED_FLAGS:
        p.add_argument(flag, nargs="?", action=_Removed, help=argparse.SUPPRESS)
    p.add_argument(
        "--daemon-user",
        help="user (name or uid) of bureau-daemon, allowed on the launcher socket besides the "
        "launcher's own user and root",
    )
    sandbox_flags.add_arguments(p, owner="the launcher's")
    p.add_argument(
        "--sandbox-broker",
        type=Path,
        metavar="SOCKET",
        help="bureau-sandboxd's socket: it starts and stops the sandboxes, holding the "
        "capabilities that takes, and the launcher holds none (the sandbox flags are then "
        "bureau-sandboxd's). Without it the launcher starts sandboxes itself and needs "
        "CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_KILL",
    )
    p.add_argument(
        "--allow-unbound-bundles",
        action="store_true",
        help="serve credential bundles that carry no binding (as upstream Bureau's tools write "
        "them), with the routes of the principal's template as the daemon relays them: a "
        "subverted daemon could then send those credentials to any host (MATRIX_TOKEN aside). "
        "Default: refused, in one line naming the principal",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="act on credentials events, machine-config assignments and templates that carry "
        "no operator signature (as upstream Bureau's tools write them): whoever can write "
        "them into the machine's rooms, or a subverted daemon, could then choose what runs. "
        "A signature that does not verify is refused all the same. Default: refused, in one "
        "line naming the principal",
    )
    p.add_argument(
        "--log-level", help="debug, info, warning, error (default: $BUREAU_LOG_LEVEL or info)"
    )
    return p


def _prepare_state_dir(state_dir: Path, logger: Any) -> None:
    try:
        exists = state_dir.exists()
    except PermissionError:
        raise InputError(str(state_dir), None, "--state-dir: permission denied") from None
    if exists and not state_dir.is_dir():
        raise InputError(str(state_dir), None, "is not a directory (--state-dir)")
    # Before anything in it is read: a key or session planted by whoever could write
    # there would become the machine's.
    if exists:
        check_owned_dir(state_dir, "--state-dir", 0o700)
    make_dirs(state_dir, 0o700)
    removed = remove_stale_temporaries(state_dir)
    if removed:
        logger.info("removed what an interrupted write left behind", files=removed)


def _first_boot_done(state_dir: Path, machine_name: str, creds_dir: str | None) -> bool:
    """session.json and a stored key: the machine has booted before."""
    session = load_session(state_dir)
    if session is None:
        return False
    localpart, _ = names.parse_user_id(session.user_id)
    fleet = names.fleet_of_entity(localpart) if names.is_full_entity(localpart) else ""
    try:
        wanted = names.expand_entity(machine_name, fleet, "machine")
    except names.InvalidName as exc:
        raise UsageError(f"--machine-name: {exc}") from None
    if wanted != localpart:
        raise InputError(
            str(session_path(state_dir)),
            "user_id",
            f"is {session.user_id!r}, which is not --machine-name {wanted!r}",
        )
    if key_store.load(state_dir, creds_dir) is None:
        raise BureauError(
            f"{state_dir}: session.json exists but no machine key does; the key cannot be "
            "recovered: decommission and provision the machine again"
        )
    return True


def _check_run_dir(run_dir: Path) -> None:
    """The run dir and what the launcher keeps in it (adoption records, proxy sockets):
    whoever could write there could rename the launcher's socket away and bind their own,
    or plant a record or a socket; an entry planted while the run dir was loose outlives
    the repair of its mode, so everything below is checked too. The packaged run dir is
    0750 (bureau-operators may enter it, not write)."""
    if run_dir.exists() or run_dir.is_symlink():
        check_owned_dir(run_dir, "--run-dir", 0o750)
    for part in RUN_DIR_PARTS:
        below = run_dir / part
        if below.exists() or below.is_symlink():
            check_owned_tree(below, f"--run-dir {run_dir}")


def _log_operator_keys(args: argparse.Namespace, state_dir: Path, logger: Any) -> None:
    pinned = operator_trust.load_pinned(state_dir)
    logger.info(
        "operator keys",
        pinned=sorted(pinned.keys),
        unsigned="accepted (--allow-unsigned)" if args.allow_unsigned else "refused",
    )
    if not pinned.keys and not args.allow_unsigned:
        logger.warning("every ensure will be refused", why=operator_trust.NO_KEY_HINT)


def _serve(
    args: argparse.Namespace,
    state_dir: Path,
    creds_dir: str | None,
    logger: Any,
    notifier: Notifier,
) -> int:
    run_dir: Path = args.run_dir.absolute()
    _check_run_dir(run_dir)
    session = load_session(state_dir)
    found = key_store.load(state_dir, creds_dir)
    if session is None or found is None:
        raise BureauError(f"{state_dir}: no session or no machine key; first boot is not done")
    secret_key, source = found
    logger = logger.bind(machine=session.user_id)
    logger.info("machine key loaded", source=source)
    # Root too: it can read the key anyway, and `bureau machine doctor` runs as root.
    allowed = {os.getuid(), 0, *sandbox_flags.uid_of_user(args.daemon_user, "--daemon-user")}
    sandboxes = SandboxOptions(
        uids=parse_range(sandbox_flags.uid_range_text(args)),
        directory=args.sandbox_dir.absolute() if args.sandbox_dir else None,
        host_network=args.allow_host_network,
        protected=(creds_dir,) if creds_dir else (),
        broker=args.sandbox_broker.absolute() if args.sandbox_broker else None,
    )
    logger.info(
        "unbound credential bundles",
        policy="served (--allow-unbound-bundles)" if args.allow_unbound_bundles else "refused",
    )
    _log_operator_keys(args, state_dir, logger)
    asyncio.run(
        server.serve(
            machine_user=session.user_id,
            secret_key=secret_key,
            state_dir=state_dir,
            run_dir=run_dir,
            allowed_uids=allowed,
            log=logger,
            notifier=notifier,
            sandboxes=sandboxes,
            unbound=Unbound(session.homeserver_url) if args.allow_unbound_bundles else None,
            allow_unsigned=args.allow_unsigned,
        )
    )
    return 0


def _main(argv: list[str] | None) -> int:
    # Before the key is anywhere in memory: no core dump, no ptrace by same-uid processes.
    no_dumps()
    # The unit grants capabilities (to start sandboxes as their own uids) as ambient ones;
    # the launcher keeps them, and nothing it executes inherits them.
    clear_ambient_capabilities()
    args = build_parser().parse_args(argv)
    try:
        level = log.resolve_level(args.log_level)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None
    log.configure(level, identifier=PROG)
    logger = log.get(PROG).bind(machine=args.machine_name)
    notifier = Notifier()  # first: no child may inherit the notify socket
    raise_interrupted_on_signals()

    if args.sandbox_broker is not None and sandbox_flags.given(args):
        raise UsageError(
            f"{sandbox_flags.given(args)[0]}: with --sandbox-broker, sandboxes are "
            "bureau-sandboxd's: give it there (BUREAU_SANDBOX_OPTIONS in machine.conf)"
        )
    if args.homeserver_wait < 0:
        raise UsageError("--homeserver-wait: must be 0 or more seconds")

    def progress(step: first_boot.Step) -> None:
        # A slow homeserver must not make systemd give up on a first boot that advances.
        notifier.extend_timeout(FIRST_BOOT_STEP_SECONDS, f"first boot: {step}")

    def waiting(seconds: float, why: str) -> None:
        notifier.extend_timeout(seconds + FIRST_BOOT_STEP_SECONDS, f"first boot: {why}")

    def until_done(boot: Callable[[], Session]) -> None:
        first_boot.until_done(boot, wait_seconds=args.homeserver_wait, log=logger, waiting=waiting)

    state_dir: Path = args.state_dir.absolute()
    _prepare_state_dir(state_dir, logger)
    creds_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    keys = first_boot.KeyOptions(state_dir, key_store.KeyStorage(args.key_storage), creds_dir)

    if args.bootstrap_file is not None and (
        args.bootstrap_file.exists()
        or not _first_boot_done(state_dir, args.machine_name, creds_dir)
    ):
        until_done(
            lambda: first_boot.boot_with_bootstrap(
                bootstrap_file=args.bootstrap_file,
                machine_name=args.machine_name,
                keys=keys,
                log=logger,
                checkpoint=progress,
            )
        )
        logger.info("first boot complete")
    elif not _first_boot_done(state_dir, args.machine_name, creds_dir):
        raise UsageError(
            f"{state_dir} holds no session and no machine key: first boot needs "
            "--bootstrap-file (from `bureau machine provision`)"
        )
    else:
        logger.info("first boot already complete", state_dir=str(state_dir))

    if args.first_boot_only:
        return 0
    # From here on SIGTERM is a clean stop handled by the event loop, not an interruption.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _serve(args, state_dir, creds_dir, logger, notifier)
    finally:
        notifier.close()


def main(argv: list[str] | None = None) -> None:
    run(PROG, lambda: _main(argv if argv is not None else sys.argv[1:]))
