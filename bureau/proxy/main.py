"""bureau-proxy: holds one principal's credentials in memory and injects them into that
principal's requests. Started by the launcher, which writes the payload to stdin and
closes it; the proxy answers "READY <pid>" on stdout once its socket accepts connections.
SIGTERM: stop accepting, let in-flight requests finish (bounded), exit 0. The proxy never
unlinks its socket path: the launcher owns the path, and after a rotation the path belongs
to the proxy that replaced this one. A proxy nobody can reach or stop (its socket path
gone or taken, its launcher gone: orphan.py) stops itself the same way.

Any other exit says why in one log line, and never with a credential value: an expected
failure exits 1 (2 for usage), anything else 70 with its type and message, any credential
in that message masked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import uvloop

from bureau import lifecycle, log
from bureau.edge import Parser, run
from bureau.errors import BureauError, InputError, UsageError
from bureau.files import make_dirs
from bureau.hardening import no_dumps
from bureau.lifecycle import Owned
from bureau.proxy import orphan
from bureau.proxy.server import SWEEP_SECONDS, ClientConnection, Proxy
from bureau.wire.proxy_payload import WHERE, ProxyPayload

PROG = "bureau-proxy"
EX_SOFTWARE = 70  # sysexits: an internal error, not the input's fault
MAX_PAYLOAD = 1 << 20
DRAIN_SECONDS = 10.0
ACCEPT_GRACE = 0.05


def build_parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="One principal's credential-injecting HTTP proxy. "
        "Reads its payload from stdin; started by bureau-launcher.",
    )
    p.add_argument("--socket", type=Path, required=True, help="Unix socket path to listen on")
    p.add_argument(
        "--installed-as",
        type=Path,
        help="the path the launcher renames --socket to once READY (orphan.py watches both)",
    )
    p.add_argument("--machine", help="the machine's user ID, for log entries")
    p.add_argument("--log-level", help="debug, info, warning, error ($BUREAU_LOG_LEVEL, info)")
    return p


def read_payload() -> ProxyPayload:
    raw = sys.stdin.buffer.read(MAX_PAYLOAD + 1)
    if len(raw) > MAX_PAYLOAD:
        raise InputError(WHERE, None, f"larger than {MAX_PAYLOAD} bytes")
    try:
        payload = ProxyPayload.from_bytes(raw)
    except BureauError:
        raise
    except Exception as exc:
        # Whatever the parser raised, the proxy still says why it stops.
        raise InputError(WHERE, None, describe(exc, _raw_credentials(raw))) from None
    return payload  # an upstream_url's port is checked there too (ServiceRoute)


def describe(exc: BaseException, secrets: list[str]) -> str:
    """An unexpected exception as one line, each credential value in it masked: its
    message is not ours to vouch for."""
    text = f"{type(exc).__name__}: {exc}"
    for secret in sorted(secrets, key=len, reverse=True):  # the longest first: none is left half
        if secret:
            text = text.replace(secret, "<redacted>")
    return " ".join(text.split())  # one line, once nothing is left to mask


def _raw_credentials(raw: bytes) -> list[str]:
    """The credential values in a payload that did not load, to mask in why it did not."""
    try:
        credentials = json.loads(raw).get("credentials")
    except (ValueError, AttributeError, RecursionError):
        return []
    if not isinstance(credentials, dict):
        return []
    return [v for v in credentials.values() if isinstance(v, str)]


async def serve(
    payload: ProxyPayload,
    socket_path: Path,
    logger: Any,
    *,
    debug: bool,
    installed_as: Path | None = None,
    parent: int | None = None,
) -> None:
    """``parent``: the launcher's pid (orphan.py); None: no orphan watch."""
    proxy = Proxy(payload, logger, debug=debug)
    server: asyncio.Server | None = None
    stop = asyncio.Event()

    async def start(tasks: Owned) -> None:
        nonlocal server
        make_dirs(socket_path.parent, 0o755)
        # Bind with the final mode: no moment where the socket is wider than 0660.
        old_umask = os.umask(0o117)
        try:
            server = await asyncio.get_running_loop().create_unix_server(
                lambda: ClientConnection(proxy), str(socket_path), backlog=1024
            )
        except OSError as exc:
            raise BureauError(f"--socket {socket_path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        tasks.create_task(_sweep(proxy))
        if parent is not None:
            watch = orphan.Watch.of(socket_path, installed_as, parent)
            tasks.create_task(orphan.watch(watch, stop, logger))
        try:
            # Unbuffered: nothing of it may be left for a flush at exit to fail on again.
            os.write(sys.stdout.fileno(), f"READY {os.getpid()}\n".encode())
        except BrokenPipeError:
            # The launcher died before reading READY: it never moved this socket into
            # place, so no client can reach it, and the next launcher starts a new proxy.
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()  # noqa: ASYNC240 - one local unlink, on the way out
            raise BureauError("the launcher went away before this proxy was ready") from None
        logger.info("proxy serving", socket=str(socket_path), services=sorted(payload.services))

    async def draining() -> None:
        logger.info("draining")
        # The launcher renamed this socket's path to the next proxy before signalling:
        # nothing new arrives here, but connections already queued on the listener are
        # accepted and answered rather than reset with it.
        proxy.drain()
        await asyncio.sleep(ACCEPT_GRACE)
        if server is not None:
            server.close()
        await proxy.no_clients.wait()

    try:
        await lifecycle.serve(
            start,
            draining,
            grace=DRAIN_SECONDS,
            stop=stop,
            on_grace_exceeded=lambda: logger.warning(
                "drain timed out", connections=len(proxy.clients)
            ),
        )
    finally:
        if server is not None:
            server.close()
        await proxy.cancel_tasks()


async def _sweep(proxy: Proxy) -> None:
    """Timeouts, checked once a second rather than armed per request."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        proxy.sweep()


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        level = log.resolve_level(args.log_level)
        log.configure(level, identifier=PROG)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None
    logger = log.get(PROG)
    if args.machine:
        logger = logger.bind(machine=args.machine)
    secrets: list[str] = []
    try:
        no_dumps()
        payload = read_payload()
        secrets = [s.reveal() for s in payload.credentials.values()]
        logger = logger.bind(principal=payload.principal)
        # Read only now: the payload's end means the launcher is our parent (orphan.py).
        parent = os.getppid()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(
                serve(
                    payload,
                    args.socket,
                    logger,
                    debug=level == "debug",
                    installed_as=args.installed_as,
                    parent=parent,
                )
            )
    except BureauError as exc:
        logger.error("proxy exiting", reason=str(exc))
        return exc.exit_code
    except Exception as exc:
        # A bug, or a failure nobody foresaw: still one line saying why, rather than a
        # traceback nobody sees once the template's fork exits.
        logger.error("proxy exiting", reason=describe(exc, secrets))
        return EX_SOFTWARE
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        run(PROG, lambda: _main(argv if argv is not None else sys.argv[1:]))
    except Exception as exc:
        # Before logging was set up; no payload has been read yet.
        sys.stderr.write(f"{PROG}: exiting: {describe(exc, [])}\n")
        raise SystemExit(EX_SOFTWARE) from None
