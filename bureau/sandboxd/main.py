"""bureau-sandboxd: the launcher's sandbox host (launcher/sandbox_host.py) behind a Unix
socket, ``RUN_DIR/sandboxd/sandboxd.sock`` (0600, in a 0700 directory the daemon's unit
hides), for the launcher's uid alone (SO_PEERCRED).

It holds CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_KILL, no key, no credential, and no
network but loopback (its unit's PrivateNetwork=): a request can start a sandbox only
as a uid of its --sandbox-uids, for a principal of its --fleet whose proxy runs, with a
spec its own policy passes, and signal only the processes of that principal's uid. One
request per connection, each served on a thread of its own, one principal's at a time.
SIGTERM stops it within a few seconds. Its unit stops its sandboxes with it (systemd 252
cannot start a delegated unit again while its sub-cgroups hold processes); without that,
a restarted sandboxd serves them again (their keepers are found by uid)."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bureau import log
from bureau.edge import Interrupted, Parser, raise_interrupted_on_signals, run
from bureau.errors import UsageError
from bureau.files import check_owned_dir, make_dirs
from bureau.hardening import become_subreaper, clear_ambient_capabilities, no_dumps
from bureau.launcher import sandbox_flags
from bureau.launcher import sandbox_policy as policy
from bureau.launcher.cgroups import Cgroups
from bureau.launcher.children import LauncherError
from bureau.launcher.sandbox_host import SandboxHost
from bureau.launcher.sandbox_uids import SandboxUids, parse_range
from bureau.notify import Notifier
from bureau.wire.sandbox_broker import Reply, Request, WireError, receive, send

PROG = "bureau-sandboxd"
SOCKET_DIR = "sandboxd"
SOCKET_NAME = "sandboxd.sock"
STOP_GRACE = 5.0  # for requests under way when SIGTERM comes
# A peer that connects and sends nothing holds a thread this long at most.
REQUEST_TIMEOUT = 5.0


def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Start and stop sandboxes for bureau-launcher (its --sandbox-broker).",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path("/run/bureau"),
        help="the launcher's run dir: proxy sockets are linked from there into sandboxes, "
        f"and {SOCKET_DIR}/{SOCKET_NAME} is made there (default %(default)s)",
    )
    p.add_argument(
        "--fleet",
        required=True,
        help="the fleet whose principals may run here, e.g. bureau/fleet/prod "
        "($BUREAU_FLEET in machine.conf)",
    )
    p.add_argument(
        "--server-name",
        required=True,
        help="the Matrix server name of those principals ($BUREAU_SERVER_NAME)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/bureau"),
        help="the launcher's state dir, which no sandbox may mount (default %(default)s)",
    )
    p.add_argument(
        "--protect",
        action="append",
        default=[],
        metavar="PATH",
        help="another path no sandbox may mount (repeatable); the state, run and sandbox "
        "dirs, /etc/bureau and /run/credentials always are",
    )
    p.add_argument(
        "--daemon-user",
        help="user (name or uid) of bureau-daemon, whose uid no sandbox may take",
    )
    sandbox_flags.add_arguments(p, owner="bureau-sandboxd's (the launcher's)")
    p.add_argument(
        "--log-level", help="debug, info, warning, error (default: $BUREAU_LOG_LEVEL or info)"
    )
    return p


def peer_uid(conn: socket.socket) -> int:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[1])


class Broker:
    def __init__(self, host: SandboxHost, log: Any) -> None:
        self._host = host
        self._log = log

    def answer(self, request: Request) -> tuple[Reply, list[int]]:
        """The reply, and descriptors to send with it (closed by the caller)."""
        host, principal = self._host, request.principal
        if request.op not in {"hello", "sweep"} and not principal:
            raise LauncherError(f"{request.op}: no principal")
        spec = request.spec
        if request.op in {"check", "start"} and spec is None:
            raise LauncherError(f"sandbox for {principal}: no spec")
        if request.op == "start" and spec is not None:
            pid, log_r = host.start(principal, spec, request.names)
            self._log.info("sandbox started", principal=principal, pid=pid)
            return Reply(pid=pid), [log_r]

        def done(call: Callable[..., object], *args: Any) -> Reply:
            call(*args)
            return Reply()

        def figures(found: tuple[int, int, float]) -> Reply:
            return Reply(pid=found[0], memory=found[1], cpu=found[2])

        r, keeper = request, request.keeper
        handlers: dict[str, Callable[[], Reply]] = {
            "hello": lambda: Reply(mode=host.mode),
            "known": lambda: Reply(known=host.known(principal)),
            "check": lambda: done(host.check, principal, spec, r.names),
            "relink": lambda: done(host.relink, principal),
            "finish": lambda: Reply(how=host.finish(principal, keeper, reaped=r.reaped)),
            "terminate": lambda: done(host.terminate, principal, keeper),
            "kill": lambda: done(host.kill, principal, keeper),
            "removed": lambda: done(host.removed, principal),
            "sweep": lambda: Reply(killed=tuple(host.sweep(set(r.adopted)))),
            "workload": lambda: figures(host.workload(principal, keeper)),
        }
        return handlers[request.op](), []

    def serve_one(self, conn: socket.socket, allowed: int) -> None:
        fds: list[int] = []
        with conn:
            try:
                conn.settimeout(REQUEST_TIMEOUT)
                # Read first even from a peer refused: a socket closed with its request
                # unread resets the peer, which would never see why.
                raw, _ = receive(conn)
                uid = peer_uid(conn)
                if uid != allowed:
                    self._log.warning("refused a peer", uid=uid)
                    send(conn, Reply(error=f"{PROG}: uid {uid} may not ask").to_json())
                    return
            except (OSError, WireError) as exc:
                self._log.warning("a request went unanswered", error=str(exc))
                return
            try:
                request = Request.from_json(raw)
            except WireError as exc:
                # Answered, so that the launcher says why rather than "is it running?".
                self._log.warning("refused a malformed request", error=str(exc))
                with contextlib.suppress(OSError, WireError):
                    send(conn, Reply(error=f"{PROG}: {exc}").to_json())
                return
            try:
                reply, fds = self.answer(request)
            except Exception as exc:  # every request gets its answer, a bug's too
                text = str(exc) if isinstance(exc, LauncherError) else repr(exc)
                if request.op not in ("known", "check"):
                    self._log.error(f"{request.op} failed", principal=request.principal, error=text)
                reply = Reply(error=text)
            try:
                send(conn, reply.to_json(), fds)
            except (OSError, WireError) as exc:
                self._log.warning("a reply went undelivered", op=request.op, error=str(exc))
                if request.op == "start" and reply.pid:  # nobody would supervise it
                    with contextlib.suppress(Exception):
                        self._host.kill(request.principal, reply.pid)
            finally:
                for fd in fds:
                    os.close(fd)


def _listen(run_dir: Path) -> socket.socket:
    """Bound under a temporary name and renamed into place: the launcher never finds a
    socket that is not yet 0600, nor the path missing while an old one is replaced."""
    make_dirs(run_dir, 0o755)  # as the launcher makes it
    directory = run_dir / SOCKET_DIR
    make_dirs(directory, 0o700)
    check_owned_dir(directory, f"--run-dir {run_dir}: {SOCKET_DIR}", 0o700)
    final = directory / SOCKET_NAME
    temporary = directory / f".{SOCKET_NAME}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(temporary))
    finally:
        os.umask(old_umask)
    temporary.rename(final)
    listener.listen(64)
    return listener


def _check_host_network(allowed: bool) -> None:
    """A sandbox that may share the host's network shares this process's: the unit's
    PrivateNetwork=yes would leave it loopback alone, and the template silently broken."""
    if allowed and {name for _, name in socket.if_nameindex()} <= {"lo"}:
        raise UsageError(
            "--allow-host-network: this process has no network but loopback (the unit's "
            "PrivateNetwork=yes); give it the host's with a drop-in: systemctl edit "
            "bureau-sandboxd, [Service] PrivateNetwork=no"
        )


def _serve(args: argparse.Namespace, logger: Any, notifier: Notifier) -> int:
    _check_host_network(args.allow_host_network)
    run_dir: Path = args.run_dir.absolute()
    state_dir: Path = args.state_dir.absolute()
    if run_dir.exists():
        check_owned_dir(run_dir, "--run-dir", 0o755)
    workspaces = (args.sandbox_dir or state_dir.parent / "bureau-sandbox").absolute()
    make_dirs(workspaces, 0o711)
    check_owned_dir(workspaces, "--sandbox-dir", 0o711)
    protected = (str(state_dir), str(run_dir), str(workspaces), "/etc/bureau", "/run/credentials")
    reserved = {os.getuid(), *sandbox_flags.uid_of_user(args.daemon_user, "--daemon-user")}
    host = SandboxHost(
        sandbox_dir=workspaces,
        run_dir=run_dir,
        machine=policy.Machine((*protected, *args.protect), args.allow_host_network),
        uids=SandboxUids(workspaces, parse_range(sandbox_flags.uid_range_text(args)), reserved),
        cgroups=Cgroups(),
        fleet=(args.server_name, args.fleet),
    )
    broker = Broker(host, logger)
    listener = _listen(run_dir)
    threads: set[threading.Thread] = set()
    try:  # from here on, SIGTERM is a clean stop
        logger.info("serving", socket=str(run_dir / SOCKET_DIR / SOCKET_NAME), cgroups=host.mode)
        if host.mode == "none":
            logger.warning("no writable cgroups: sandboxes get rlimits only (memory unlimited)")
        notifier.ready(f"serving; cgroups {host.mode}")
        while True:
            conn, _ = listener.accept()
            thread = threading.Thread(
                target=broker.serve_one, args=(conn, os.getuid()), daemon=True
            )
            threads = {t for t in threads if t.is_alive()} | {thread}
            thread.start()
    except Interrupted:
        notifier.stopping("stopping")
        listener.close()
        for thread in threads:
            thread.join(STOP_GRACE)
    return 0


def _main(argv: list[str]) -> int:
    no_dumps()
    # The unit grants its capabilities as ambient ones; nothing it executes inherits them
    # (a sandbox's keeper starts as the sandbox's uid, which drops them in any case).
    clear_ambient_capabilities()
    args = build_parser().parse_args(argv)
    try:
        level = log.resolve_level(args.log_level)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None
    log.configure(level, identifier=PROG)
    logger = log.get(PROG)
    notifier = Notifier()
    raise_interrupted_on_signals()
    # bwrap's inner process is reparented here when its outer one dies first.
    become_subreaper()
    try:
        return _serve(args, logger, notifier)
    finally:
        notifier.close()


def main(argv: list[str] | None = None) -> None:
    run(PROG, lambda: _main(argv if argv is not None else sys.argv[1:]))
