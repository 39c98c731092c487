"""The launcher socket's answers (launcher_protocol.py), typed on both sides. Pure.

    {"ok": true, <the answer's fields>}
    {"ok": false, "error": "<one line, never credential content>"}

An answer in a shape the reader does not know is a ProtocolError naming the field; the
daemon treats it as no answer and asks again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bureau.wire.names import InvalidName, PrincipalRef


class ProtocolError(Exception):
    pass


def _field(obj: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    # bool is an int to Python; a count or pid that is true/false is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{where}: {name}: expected {kind.__name__}")
    return value


def _names(obj: dict[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = obj.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{where}: {name}: expected a list of strings")
    return tuple(value)


def _number(obj: dict[str, Any], name: str, where: str) -> float:
    value = obj.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ProtocolError(f"{where}: {name}: expected a number")
    return float(value)


def _object(obj: object, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: expected an object")
    return obj


@dataclass(frozen=True)
class SandboxState:
    """A principal's sandbox as ``list`` reports it."""

    status: str  # running | restarting | exited
    pid: int  # the workload's, as this machine sees it; 0 when none runs
    digest: str  # of the SandboxSpec it runs
    template: str
    restarts: int
    last_exit: str  # "status N" or "signal NAME" of its last exit, "" if none
    memory_mb: float
    cpu_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pid": self.pid,
            "digest": self.digest,
            "template": self.template,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "memory_mb": self.memory_mb,
            "cpu_seconds": self.cpu_seconds,
        }

    @classmethod
    def from_json(cls, obj: object, where: str) -> SandboxState:
        data = _object(obj, where)
        return cls(
            status=_field(data, "status", str, where),
            pid=_field(data, "pid", int, where),
            digest=_field(data, "digest", str, where),
            template=_field(data, "template", str, where),
            restarts=_field(data, "restarts", int, where),
            last_exit=_field(data, "last_exit", str, where),
            memory_mb=_number(data, "memory_mb", where),
            cpu_seconds=_number(data, "cpu_seconds", where),
        )


@dataclass(frozen=True)
class PrincipalState:
    """One principal as ``list`` reports it: names and numbers, never credential values."""

    principal: PrincipalRef
    pid: int
    socket: str
    digest: str  # of the credentials event content it runs
    keys: tuple[str, ...]
    services: tuple[str, ...]
    started_at: str
    restarts: int
    status: str  # running | restarting
    sandbox: SandboxState | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal.user_id,
            "pid": self.pid,
            "socket": self.socket,
            "digest": self.digest,
            "keys": list(self.keys),
            "services": list(self.services),
            "started_at": self.started_at,
            "restarts": self.restarts,
            "status": self.status,
            **({"sandbox": self.sandbox.to_json()} if self.sandbox is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: object, where: str = "principal") -> PrincipalState:
        data = _object(obj, where)
        try:
            principal = PrincipalRef.from_user_id(_field(data, "principal", str, where))
        except InvalidName as exc:
            raise ProtocolError(f"{where}: principal: {exc}") from None
        # A status a newer launcher adds is not "running"; the rest of the answer stands.
        status = _field(data, "status", str, where)
        return cls(
            principal=principal,
            pid=_field(data, "pid", int, where),
            socket=_field(data, "socket", str, where),
            digest=_field(data, "digest", str, where),
            keys=_names(data, "keys", where),
            services=_names(data, "services", where),
            started_at=_field(data, "started_at", str, where),
            restarts=_field(data, "restarts", int, where),
            status=status,
            sandbox=(
                None
                if data.get("sandbox") is None
                else SandboxState.from_json(data["sandbox"], f"{where}: sandbox")
            ),
        )


@dataclass(frozen=True)
class LauncherStatus:
    machine: str
    principals: int
    running: int

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "principals": self.principals, "running": self.running}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LauncherStatus:
        return cls(
            _field(obj, "machine", str, "status"),
            _field(obj, "principals", int, "status"),
            _field(obj, "running", int, "status"),
        )


@dataclass(frozen=True)
class Listing:
    """What ``list`` answers: every principal the launcher runs."""

    principals: tuple[PrincipalState, ...]

    def to_json(self) -> dict[str, Any]:
        return {"principals": [p.to_json() for p in self.principals]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Listing:
        items = obj.get("principals")
        if not isinstance(items, list):
            raise ProtocolError("list: principals: expected a list")
        return cls(
            tuple(
                PrincipalState.from_json(item, f"list: principals[{i}]")
                for i, item in enumerate(items)
            )
        )


@dataclass(frozen=True)
class EnsureResult:
    changed: bool  # false: that content was running already
    socket: str

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "socket": self.socket}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EnsureResult:
        return cls(_field(obj, "changed", bool, "ensure"), _field(obj, "socket", str, "ensure"))


@dataclass(frozen=True)
class StopResult:
    stopped: bool  # false: it was not running

    def to_json(self) -> dict[str, Any]:
        return {"stopped": self.stopped}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StopResult:
        return cls(_field(obj, "stopped", bool, "stop"))


@dataclass(frozen=True)
class ReloginResult:
    renewed: bool  # false: the session still worked

    def to_json(self) -> dict[str, Any]:
        return {"renewed": self.renewed}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ReloginResult:
        return cls(_field(obj, "renewed", bool, "relogin"))


@dataclass(frozen=True)
class TrustResult:
    """The operator keys the launcher trusts after a ``trust`` request (IDs only)."""

    keys: tuple[str, ...]
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "changed": self.changed}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrustResult:
        return cls(_names(obj, "keys", "trust"), _field(obj, "changed", bool, "trust"))


@dataclass(frozen=True)
class Refusal:
    """The launcher would not, or could not, do what was asked."""

    error: str

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Refusal:
        return cls(_field(obj, "error", str, "refusal"))


Answer = LauncherStatus | Listing | EnsureResult | StopResult | ReloginResult | TrustResult
A = TypeVar("A", bound=Answer)


def encode_answer(answer: Answer | Refusal) -> bytes:
    body = {"ok": not isinstance(answer, Refusal), **answer.to_json()}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def read_answer(line: bytes, read: Callable[[dict[str, Any]], A]) -> A | Refusal:
    """The answer in ``line``: what ``read`` makes of it, or the launcher's refusal."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError("answer is not JSON") from None
    data = _object(obj, "answer")
    ok = data.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("answer: ok: expected bool")
    return read(data) if ok else Refusal.from_json(data)
