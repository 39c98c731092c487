"""bureau-proxy's template: a process that has imported the proxy once and forks a new
proxy for each request from the launcher.

A fresh interpreter importing the proxy takes ~200 ms and ~20 MiB of private memory; a
fork of this process is ready in a few milliseconds and shares those pages until it
writes to them (gc.freeze keeps the collector from touching them). The template never
sees a credential: the launcher writes the payload straight to the new proxy's stdin.

Protocol, over the SOCK_SEQPACKET socket whose fd --control-fd names: the launcher
sends one JSON message {"argv": [...]} with two file descriptors attached (the proxy's
stdin and stdout); the template answers {"pid": N} or {"error": "..."}. The proxy is
forked twice so that it is orphaned at once and the launcher, a child subreaper, becomes
its parent and collects its exit status. The template exits when the launcher closes its end.
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import os
import signal
import socket
import sys

from bureau import sandbox_log
from bureau.hardening import no_dumps, set_process_name, set_title
from bureau.proxy import main as proxy_main

MAX_MESSAGE = 4096


def _receive(control: socket.socket) -> tuple[list[str], list[int]] | None:
    fds = array.array("i")
    data, ancillary, _, _ = control.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    argv = json.loads(data)["argv"]
    return [str(a) for a in argv], list(fds)


def _run_proxy(control: socket.socket, argv: list[str], stdin: int, stdout: int) -> None:
    """In the grandchild: become the proxy. Never returns. The proxy says why it exits on
    every path it knows of; whatever else ends this process says so in one line too, not
    in a traceback os._exit would drop."""
    code = proxy_main.EX_SOFTWARE
    proxy_ran = False
    try:
        os.setsid()
        control.close()
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.close(stdin)
        os.close(stdout)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        gc.unfreeze()
        if argv[:1] == ["--log-relay"]:
            set_process_name("bureau-sbx-log")
            set_title(["bureau-sandbox-log", *argv[1:]])
            sandbox_log.main(argv[1:])
        set_process_name("bureau-proxy")
        set_title(["bureau-proxy", *argv])
        proxy_ran = True
        try:
            proxy_main.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if exc.code is None:
                code = 0  # sys.exit(): a clean stop
    except BaseException as exc:
        # Once the proxy has run, its type alone: the message might quote its payload.
        why = type(exc).__name__ if proxy_ran else proxy_main.describe(exc, [])
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"bureau-proxy: exiting: {why}\n")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _fork_proxy(control: socket.socket, argv: list[str], fds: list[int]) -> int:
    report_r, report_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(report_r)
            pid = os.fork()
            if pid == 0:
                os.close(report_w)
                _run_proxy(control, argv, fds[0], fds[1])
            os.write(report_w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(report_w)
    for fd in fds:
        os.close(fd)
    with os.fdopen(report_r, "rb") as report:
        reported = report.read()
    os.waitpid(middle, 0)
    if not reported:
        raise OSError("the proxy could not be forked")
    return int(reported)


def serve(control: socket.socket) -> None:
    gc.collect()
    gc.freeze()
    while True:
        request = _receive(control)
        if request is None:
            return
        argv, fds = request
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": "expected stdin and stdout"}).encode())
            continue
        try:
            pid = _fork_proxy(control, argv, fds)
        except OSError as exc:
            control.send(json.dumps({"error": f"fork failed: {exc}"}).encode())
            continue
        control.send(json.dumps({"pid": pid}).encode())


def main() -> None:
    no_dumps()
    set_process_name("bureau-proxy-tm")
    set_title(["bureau-proxy-template"])
    # SIGTERM or SIGINT end the template; the proxies it forked live in their own sessions.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A last argument of blanks is room for the forked proxies' titles (see set_title).
    args = [a for a in sys.argv[1:] if a.strip()]
    if len(args) != 2 or args[0] != "--control-fd" or not args[1].isdigit():
        sys.stderr.write("bureau-proxy template: started by bureau-launcher with --control-fd N\n")
        raise SystemExit(2)
    control = socket.socket(fileno=int(args[1]))
    try:
        serve(control)
    except (KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        control.close()


if __name__ == "__main__":
    main()
