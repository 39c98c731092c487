"""What the launcher and bureau-sandboxd say to each other (OURS, one machine only): one
request and one reply per connection, each a JSON object in one SOCK_SEQPACKET message;
the reply to ``start`` carries a descriptor (the read end of the workload's output pipe,
for the launcher's log relay). Nothing here is secret: specs, principal names, credential
names, pids. The spec of ``check`` and ``start`` is a SandboxSpec, read again by the side
that receives it."""

from __future__ import annotations

import array
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bureau.errors import InputError
from bureau.wire.sandbox_spec import SandboxSpec

MAX_MESSAGE = 1 << 20
OPS = frozenset(
    {"hello", "check", "start", "relink", "finish", "terminate", "kill", "removed", "sweep"}
    | {"workload", "known"}
)


class WireError(ValueError):
    """A message that is not what the other side sends."""


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = data.get(name, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise WireError(f"field {name!r}: expected {getattr(kind, '__name__', kind)}")
    return value


def _ints(data: dict[str, Any], name: str) -> tuple[int, ...]:
    value = _field(data, name, list, [])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise WireError(f"field {name!r}: expected a list of integers")
    return tuple(value)


def _strings(data: dict[str, Any], name: str) -> tuple[str, ...]:
    value = _field(data, name, list, [])
    if not all(isinstance(v, str) for v in value):
        raise WireError(f"field {name!r}: expected a list of strings")
    return tuple(value)


def _object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise WireError("not a JSON message") from None
    if not isinstance(data, dict):
        raise WireError("not a JSON object")
    return data


@dataclass(frozen=True)
class Request:
    op: str
    principal: str = ""
    keeper: int = 0
    spec: SandboxSpec | None = None
    names: tuple[str, ...] = ()  # the credentials the principal's bundle holds
    reaped: bool = False
    adopted: tuple[int, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "op": self.op,
                "principal": self.principal,
                "keeper": self.keeper,
                "spec": None if self.spec is None else self.spec.to_json(),
                "names": list(self.names),
                "reaped": self.reaped,
                "adopted": list(self.adopted),
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Request:
        data = _object(raw)
        op = _field(data, "op", str, "")
        if op not in OPS:
            raise WireError(f"field 'op': unknown operation {op!r}")
        raw_spec = data.get("spec")
        if raw_spec is not None and not isinstance(raw_spec, dict):
            raise WireError("field 'spec': expected an object or null")
        try:
            spec = None if raw_spec is None else SandboxSpec.from_json(raw_spec)
        except InputError as exc:
            raise WireError(f"field 'spec': {exc}") from None
        return cls(
            op=op,
            principal=_field(data, "principal", str, ""),
            keeper=_field(data, "keeper", int, 0),
            spec=spec,
            names=_strings(data, "names"),
            reaped=_field(data, "reaped", bool, False),
            adopted=_ints(data, "adopted"),
        )


@dataclass(frozen=True)
class Reply:
    error: str = ""  # empty: it was done
    pid: int = 0
    how: str | None = None
    memory: int = 0
    cpu: float = 0.0
    mode: str = ""
    known: bool = False
    killed: tuple[str, ...] = field(default=())

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "error": self.error,
                "pid": self.pid,
                "how": self.how,
                "memory": self.memory,
                "cpu": self.cpu,
                "mode": self.mode,
                "known": self.known,
                "killed": list(self.killed),
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Reply:
        data = _object(raw)
        how = data.get("how")
        if how is not None and not isinstance(how, str):
            raise WireError("field 'how': expected a string or null")
        cpu = data.get("cpu", 0.0)
        if not isinstance(cpu, (int, float)) or isinstance(cpu, bool):
            raise WireError("field 'cpu': expected a number")
        return cls(
            error=_field(data, "error", str, ""),
            pid=_field(data, "pid", int, 0),
            how=how,
            memory=_field(data, "memory", int, 0),
            cpu=float(cpu),
            mode=_field(data, "mode", str, ""),
            known=_field(data, "known", bool, False),
            killed=_strings(data, "killed"),
        )


def send(sock: socket.socket, message: bytes, fds: Sequence[int] = ()) -> None:
    if len(message) > MAX_MESSAGE:
        raise WireError(f"message of {len(message)} bytes, more than {MAX_MESSAGE}")
    ancillary = (
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    )
    sock.sendmsg([message], ancillary)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[bytes, list[int]]:
    """One message, and the descriptors it carried (the caller's to close). More than
    ``max_fds`` descriptors are closed here and the message refused."""
    size = socket.CMSG_SPACE(max(max_fds, 1) * array.array("i").itemsize)
    message, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE, size, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            numbers = array.array("i")
            numbers.frombytes(data[: len(data) - len(data) % numbers.itemsize])
            fds += list(numbers)
    if len(fds) > max_fds or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            socket.close(fd)
        raise WireError("a message too long, or with descriptors it should not carry")
    if not message:
        raise WireError("the other side closed the connection")
    return message, fds
