"""The systemd journal's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL), as a
structlog renderer and logger.

An entry is one datagram of fields: ``NAME=value\\n``, or, when the value holds a newline,
``NAME\\n`` + its length as a little-endian u64 + the value + ``\\n``. An entry too large
for a datagram goes in a sealed memfd passed with SCM_RIGHTS. Names are upper case
letters, digits and ``_``, at most 64 characters, not starting with ``_`` (those are the
journal's trusted fields) or a digit.

Every structlog key becomes a field: ``machine`` -> BUREAU_MACHINE, ``principal`` ->
BUREAU_PRINCIPAL, the event -> BUREAU_EVENT, the rest BUREAU_<KEY>; MESSAGE repeats the
event with its context so that plain ``journalctl -u`` reads well. Values are rendered
with ``__structlog__`` where a type has it (bureau.secret.Secret renders as <redacted>).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Iterable
from typing import Any, TextIO

DEFAULT_SOCKET = "/run/systemd/journal/socket"
# Tests point their processes at a listener of their own; systemd never sets this.
SOCKET_ENV = "BUREAU_JOURNAL_SOCKET"

PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_NAME_RE = re.compile(r"[^A-Z0-9_]")
_RENAMED = {
    "event": "BUREAU_EVENT",
    "pathname": "CODE_FILE",
    "lineno": "CODE_LINE",
    "func_name": "CODE_FUNC",
}
_NOT_FIELDS = {"level", "exception"}


def socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def field_name(key: str) -> str:
    """BUREAU_<KEY> in the journal's alphabet."""
    name = "BUREAU_" + _NAME_RE.sub("_", key.upper())
    return name[:64]


def _text(value: Any) -> str:
    render = getattr(value, "__structlog__", None)
    if callable(render):
        return str(render())
    return value if isinstance(value, str) else str(value)


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """Serialize fields in the native protocol. Pure."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def decode(data: bytes) -> list[tuple[str, str]]:
    """Parse a native-protocol entry (what journald does; tests use it). Pure."""
    fields: list[tuple[str, str]] = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        line = data[pos:newline]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = newline + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, newline + 1)
            start = newline + 9
            value = data[start : start + size]
            if data[start + size : start + size + 1] != b"\n":
                raise ValueError(f"field {name.decode()!r}: no newline after its value")
            pos = start + size + 1
        fields.append((name.decode(), value.decode("utf-8", errors="replace")))
    return fields


class JournalRenderer:
    """The last structlog processor: the event dict becomes ``{"fields": [...]}``."""

    def __init__(self, identifier: str) -> None:
        self._identifier = identifier

    def __call__(self, _logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        level = str(event_dict.get("level", method))
        event = _text(event_dict.get("event", ""))
        fields = [
            ("PRIORITY", str(PRIORITIES.get(level, 6))),
            ("SYSLOG_IDENTIFIER", self._identifier),
        ]
        context = []
        for key, value in event_dict.items():
            if key in _NOT_FIELDS:
                continue
            text = _text(value)
            fields.append((_RENAMED.get(key, field_name(key)), text))
            if key not in _RENAMED and key != "logger":
                context.append(f"{key}={text}")
        message = " ".join([event, *context])
        if "exception" in event_dict:
            message += "\n" + _text(event_dict["exception"])
        fields.insert(0, ("MESSAGE", message))
        return {"fields": fields}


_process_socket: socket.socket | None = None


def _socket() -> socket.socket:
    """One unbound datagram socket for the life of the process, however often logging is
    configured."""
    global _process_socket  # noqa: PLW0603 -- a per-process resource, made once
    if _process_socket is None:
        _process_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    return _process_socket


class JournalLogger:
    def __init__(self, path: str, fallback: TextIO) -> None:
        self._path = path
        self._fallback = fallback
        self._sock = _socket()

    def _send(self, fields: list[tuple[str, str]]) -> None:
        data = encode(fields)
        try:
            try:
                self._sock.sendto(data, self._path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(data)
        except OSError:
            # The journal is gone (restarting): the stream still reaches it, unstructured.
            message = next((value for name, value in fields if name == "MESSAGE"), "")
            self._fallback.write(message + "\n")
            self._fallback.flush()

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("bureau-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            # journald takes a memfd only once it is sealed against change.
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._sock.sendmsg([b""], rights, 0, self._path)
        finally:
            os.close(fd)

    def msg(self, fields: list[tuple[str, str]]) -> None:
        self._send(fields)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class JournalLoggerFactory:
    def __init__(self, path: str, fallback: TextIO) -> None:
        self._logger = JournalLogger(path, fallback)

    def __call__(self, *_args: Any) -> JournalLogger:
        return self._logger
