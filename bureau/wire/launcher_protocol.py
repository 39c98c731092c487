"""The launcher socket's wire format (OURS): one JSON object per line, one request and one
response per connection. Pure.

    {"action": "status"}
    {"action": "list"}
    {"action": "ensure", "principal": "@<lp>:<server>",
     "credentials": {<the m.bureau.credentials content, verbatim>},
     "sandbox": {<a SandboxSpec (bureau/wire/sandbox_spec.py)>}}     absent: a proxy only
    {"action": "stop", "principal": "@<lp>:<server>"}
    {"action": "relogin"}     after the homeserver soft-logged the machine out

Every response has "ok": true|false; failures carry "error", a one-line message that never
holds credential content. Answers are typed on both sides (below): ``status`` a
LauncherStatus, ``list`` {"principals": [PrincipalState...]}, ``ensure`` an EnsureResult,
``stop`` a StopResult, ``relogin`` {"renewed": bool}.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 256 * 1024
# A credentials event nests five deep (request, content, services, service, headers); the
# bound leaves room and keeps json.loads far from the interpreter's recursion limit.
MAX_DEPTH = 16
ACTIONS = ("status", "list", "ensure", "stop", "relogin")
_SIGNIFICANT = re.compile(rb'[][{}"\\]')


class ProtocolError(Exception):
    pass


@dataclass(frozen=True)
class Request:
    action: str
    principal: str | None = None
    # The m.bureau.credentials content as the homeserver holds it, relayed untouched: its
    # digest (canonical JSON) is how both sides name what runs, and the launcher parses
    # and checks it itself (CredentialsEvent) rather than trust a form the daemon made.
    credentials: dict[str, Any] | None = None
    # A SandboxSpec's JSON: checked by the launcher itself (sandbox_policy.py).
    sandbox: dict[str, Any] | None = None

    def to_line(self) -> bytes:
        body: dict[str, Any] = {"action": self.action}
        if self.principal is not None:
            body["principal"] = self.principal
        if self.credentials is not None:
            body["credentials"] = self.credentials
        if self.sandbox is not None:
            body["sandbox"] = self.sandbox
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def nesting_depth(line: bytes) -> int:
    """How deep the JSON's arrays and objects nest, brackets inside strings aside; one
    linear pass, so that it can run before the recursive parser sees the line."""
    depth = deepest = 0
    in_string = False
    escaped = -1  # the index a backslash escapes
    for match in _SIGNIFICANT.finditer(line):
        at = match.start()
        if at == escaped:
            continue
        char = line[at : at + 1]
        if in_string:
            if char == b"\\":
                escaped = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def parse_request(line: bytes) -> Request:
    if len(line) > MAX_MESSAGE:
        raise ProtocolError(f"request larger than {MAX_MESSAGE} bytes")
    if nesting_depth(line) > MAX_DEPTH:
        raise ProtocolError(f"request nests deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError("request is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("request is not a JSON object")
    action = obj.get("action")
    if action not in ACTIONS:
        raise ProtocolError(f"action must be one of {', '.join(ACTIONS)}")
    principal = obj.get("principal")
    if action in ("ensure", "stop") and not isinstance(principal, str):
        raise ProtocolError(f"{action} needs a principal")
    credentials = obj.get("credentials")
    if action == "ensure" and not isinstance(credentials, dict):
        raise ProtocolError("ensure needs the credentials event content")
    sandbox = obj.get("sandbox")
    if sandbox is not None and (action != "ensure" or not isinstance(sandbox, dict)):
        raise ProtocolError("sandbox: expected an object, with ensure only")
    return Request(action, principal, credentials if action == "ensure" else None, sandbox)


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def failure(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def encode_response(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":")).encode() + b"\n"


# -- answers, typed on both sides ------------------------------------------------------


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
        if not isinstance(obj, dict):
            raise ProtocolError(f"{where}: expected an object")
        return cls(
            status=_field(obj, "status", str, where),
            pid=_field(obj, "pid", int, where),
            digest=_field(obj, "digest", str, where),
            template=_field(obj, "template", str, where),
            restarts=_field(obj, "restarts", int, where),
            last_exit=_field(obj, "last_exit", str, where),
            memory_mb=_number(obj, "memory_mb", where),
            cpu_seconds=_number(obj, "cpu_seconds", where),
        )


@dataclass(frozen=True)
class PrincipalState:
    """One principal as ``list`` reports it: names and numbers, never credential values."""

    principal: str
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
            "principal": self.principal,
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
        if not isinstance(obj, dict):
            raise ProtocolError(f"{where}: expected an object")
        # A status a newer launcher adds is not "running"; the rest of the answer stands.
        status = _field(obj, "status", str, where)
        return cls(
            principal=_field(obj, "principal", str, where),
            pid=_field(obj, "pid", int, where),
            socket=_field(obj, "socket", str, where),
            digest=_field(obj, "digest", str, where),
            keys=_names(obj, "keys", where),
            services=_names(obj, "services", where),
            started_at=_field(obj, "started_at", str, where),
            restarts=_field(obj, "restarts", int, where),
            status=status,
            sandbox=(
                None
                if obj.get("sandbox") is None
                else SandboxState.from_json(obj["sandbox"], f"{where}: sandbox")
            ),
        )


@dataclass(frozen=True)
class LauncherStatus:
    machine: str
    principals: int
    running: int

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "principals": self.principals, "running": self.running}


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


def listed(obj: dict[str, Any]) -> list[PrincipalState]:
    """The ``principals`` of a ``list`` answer."""
    items = obj.get("principals")
    if not isinstance(items, list):
        raise ProtocolError("list: principals: expected a list")
    return [
        PrincipalState.from_json(item, f"list: principals[{i}]") for i, item in enumerate(items)
    ]
