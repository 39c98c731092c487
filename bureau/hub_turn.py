"""coturn for the embedded hub (`bureau hub up --turn`): a TURN relay on 127.0.0.1 whose
credentials Synapse mints from a shared secret (the TURN REST API: the username is
``<expiry>:<user ID>``, the password its HMAC-SHA1 under the secret). A principal asks
for them at ``/_matrix/client/v3/voip/turnServer`` through its proxy's ``matrix``
service, as itself; the secret stays in the hub's state directory.

Files, in the hub's state directory:
    turn-secret         the shared secret (0600), read by Synapse through
                        turn_shared_secret_path, so its config does not hold it
    turn.pid            pid and kernel start time of the coturn we started
    turn/turnserver.conf  coturn's config, rewritten at each start (0600: it holds the
                        secret, which coturn reads from nowhere else; never argv or env)
    turn/coturn.out     coturn's log; turn/turndb and turn/turnserver.pid are coturn's own
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from bureau.errors import HubError
from bureau.files import atomic_write, make_dirs
from bureau.hub_config import BIND_ADDRESS
from bureau.hub_process import HubProcess, minimal_env

DEFAULT_TURN_PORT = 3478
# A principal asks for credentials when it is about to allocate; a leaked pair is good for
# this long at most. coturn checks the expiry when an allocation is made, not while it
# lasts, so a long call outlives its credentials.
TURN_LIFETIME = "10m"
_STUN_MAGIC = 0x2112A442

# Relays only to the public internet, never to this machine or its networks (loopback
# peers are refused by coturn's own default).
_PEER_RULES = (
    "no-multicast-peers",
    "denied-peer-ip=0.0.0.0-0.255.255.255",
    "denied-peer-ip=10.0.0.0-10.255.255.255",
    "denied-peer-ip=100.64.0.0-100.127.255.255",
    "denied-peer-ip=169.254.0.0-169.254.255.255",
    "denied-peer-ip=172.16.0.0-172.31.255.255",
    "denied-peer-ip=192.168.0.0-192.168.255.255",
)


class Turn:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / "turn"
        self.secret_file = state_dir / "turn-secret"
        self.config_file = self.dir / "turnserver.conf"
        self.process = HubProcess(state_dir / "turn.pid", self.dir / "coturn.out")

    @staticmethod
    def uris(port: int) -> list[str]:
        return [
            f"turn:{BIND_ADDRESS}:{port}?transport=udp",
            f"turn:{BIND_ADDRESS}:{port}?transport=tcp",
        ]

    def synapse_config(self, port: int) -> dict[str, Any]:
        return {
            "turn_uris": self.uris(port),
            "turn_shared_secret_path": str(self.secret_file),
            "turn_user_lifetime": TURN_LIFETIME,
            # Guests have no place in a fleet; every principal has an account.
            "turn_allow_guests": False,
        }

    def check(self) -> str:
        """coturn's server program, which must be installed."""
        binary = shutil.which("turnserver")
        if binary is None:
            raise HubError("--turn needs coturn's turnserver: install Debian's coturn")
        return binary

    def start(self, port: int, realm: str, wait_seconds: float) -> int:
        """Start coturn unless it runs, and wait until it answers; returns its pid."""
        running = self.process.running_pid()
        if running is not None:
            return running
        binary = self.check()
        make_dirs(self.dir, 0o700)
        if not self.secret_file.exists():
            atomic_write(self.secret_file, secrets.token_urlsafe(32).encode() + b"\n", 0o600)
        self._write_config(port, realm)
        proc = self.process.spawn(
            [binary, "-c", str(self.config_file)], cwd=self.dir, env=minimal_env()
        )
        try:
            self._wait_until_answering(proc, port, wait_seconds)
        except BaseException:
            self.process.stop(grace=5)
            raise
        return proc.pid

    def _write_config(self, port: int, realm: str) -> None:
        secret = self.secret_file.read_text().strip()
        lines = [
            "# Written by `bureau hub up --turn` at every start: edits are lost.",
            f"listening-ip={BIND_ADDRESS}",
            f"relay-ip={BIND_ADDRESS}",
            f"listening-port={port}",
            f"realm={realm}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            "fingerprint",
            "no-cli",
            "no-tls",
            "no-dtls",
            "no-software-attribute",
            *_PEER_RULES,
            "log-file=stdout",
            "simple-log",
            f"pidfile={self.dir / 'turnserver.pid'}",
            f"userdb={self.dir / 'turndb'}",
        ]
        body = "\n".join(lines).encode() + b"\n"
        with contextlib.suppress(FileNotFoundError):
            if self.config_file.read_bytes() == body:
                return
        atomic_write(self.config_file, body, 0o600)

    def _wait_until_answering(
        self, proc: subprocess.Popen[bytes], port: int, wait_seconds: float
    ) -> None:
        deadline = time.monotonic() + wait_seconds
        while not _answers_stun(port):
            if proc.poll() is not None:
                raise HubError(
                    f"coturn exited with status {proc.returncode}: {self.process.last_output()}"
                )
            if time.monotonic() > deadline:
                raise HubError(
                    f"coturn did not answer on {BIND_ADDRESS}:{port} within "
                    f"{wait_seconds:.0f} s; see {self.process.out_file}"
                )
            # No readiness signal from coturn: ask it, as a TURN client would, until it answers.
            time.sleep(0.1)

    def stop(self, grace: float = 30) -> int | None:
        return self.process.stop(grace)


def _answers_stun(port: int) -> bool:
    """A STUN Binding request (RFC 5389), which coturn answers without credentials."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, _STUN_MAGIC) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            # Connected, so that a closed port is refused at once rather than timed out.
            sock.connect((BIND_ADDRESS, port))
            sock.send(request)
            answer = sock.recv(2048)
        except OSError:
            return False
    return answer[:2] == b"\x01\x01" and answer[8:20] == transaction
