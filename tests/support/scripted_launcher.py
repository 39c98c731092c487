"""A stand-in for bureau-launcher on its socket, answering as a test scripts it: for the
daemon's side of the protocol where the real launcher cannot be made to misbehave (refuse
everything, hold one principal's start). Each connection is served by a thread of its
own, so one held answer holds up nothing else."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from bureau.wire.launcher_protocol import Answer, Refusal, Request, encode_answer, parse_request

Script = Callable[[Request], Answer | Refusal]


class ScriptedLauncher:
    def __init__(self, path: Path, answer: Script) -> None:
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._answer = answer
        self._lock = threading.Condition()
        self.requests: list[Request] = []

    def wait_for(self, check: Callable[[list[Request]], bool], timeout: float = 30) -> None:
        """Until the requests received so far satisfy ``check``."""
        with self._lock:
            assert self._lock.wait_for(lambda: check(self.requests), timeout), self.requests

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            # Read as the launcher reads it: the daemon's requests are checked too.
            request = parse_request(data)
            with self._lock:
                self.requests.append(request)
                self._lock.notify_all()
            with contextlib.suppress(OSError):
                conn.sendall(encode_answer(self._answer(request)))


@contextlib.contextmanager
def scripted_launcher(run_dir: Path, answer: Script) -> Iterator[ScriptedLauncher]:
    launcher = ScriptedLauncher(run_dir / "launcher.sock", answer)
    threading.Thread(target=launcher._accept, daemon=True).start()
    try:
        yield launcher
    finally:
        launcher._listener.close()
