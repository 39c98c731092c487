"""A raw HTTP/1.1 connection over a Unix socket, byte for byte, for the proxy tests."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, BinaryIO


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(stream: BinaryIO, *, head_only: bool = False) -> Response:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        assert name.lower() not in headers, f"duplicate {name}"
        headers[name.lower()] = value.strip()
    status = int(status_line.split()[1])
    if head_only or status in (100, 204, 304):
        return Response(status, headers, b"")
    if "content-length" in headers:
        return Response(status, headers, stream.read(int(headers["content-length"])))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while (size := int(stream.readline().split(b";")[0], 16)) > 0:
            body += stream.read(size)
            assert stream.read(2) == b"\r\n"
        assert stream.readline() == b"\r\n"
        return Response(status, headers, body)
    return Response(status, headers, stream.read())  # until the connection closes


class Conn:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, *, head_only: bool = False) -> Response:
        return read_response(self.stream, head_only=head_only)

    def closed(self) -> bool:
        """The proxy ended the connection: EOF, or a reset when it closed with bytes of
        ours still unread (what the kernel says after a refusal cut a stream short)."""
        try:
            return self.stream.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.stream.close()
        self.sock.close()
