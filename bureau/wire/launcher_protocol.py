"""The launcher socket's wire format (OURS): one JSON object per line, one request and one
response per connection. Pure.

    {"action": "status"}
    {"action": "list"}
    {"action": "ensure", "principal": "@<lp>:<server>",
     "credentials": {<the m.bureau.credentials content, verbatim>},
     "sandbox": {<a SandboxSpec (bureau/wire/sandbox_spec.py)>},    absent: a proxy only
     "assignment": {<the principal's m.bureau.machine_config entry, as published>},
     "templates": {"<ref>": {<m.bureau.template content, as published>}, ...},
     "fleet_credentials": {"state_key": "<bundle>[#<n>]",
                           "content": {<the fleet bundle's shard naming this machine>}}}
    {"action": "trust", "statements": [<operator key statements (wire/operator_keys.py)>]}
    {"action": "stop", "principal": "@<lp>:<server>"}
    {"action": "relogin"}     after the homeserver soft-logged the machine out

Every response has "ok": true|false; failures carry "error", a one-line message that never
holds credential content. Each request and each answer is a type of its own, read and
written here for both sides: a request is one of ``Request``, an answer one of ``Answer``
(status LauncherStatus, list Listing, ensure EnsureResult, stop StopResult, relogin
ReloginResult, trust TrustResult) or a Refusal.

``assignment`` and ``templates`` carry the operator's signatures (wire/signing.py): the
launcher checks them, resolves the sandbox from them itself and runs only a spec that
matches (launcher/operator_trust.py). Both are absent for an upstream-shaped machine
config the daemon cannot relay signed; the launcher then acts only where it allows
unsigned content. ``fleet_credentials`` (absent: none) is the shard of the fleet bundle the
principal's template names (``credential_ref``), as published in the fleet room: the
launcher resolves the ref itself from the signed templates and checks the shard against
it (launcher/fleet_check.py). What ``list`` reports as a principal's ``digest`` is
``running_digest`` of both, so that a new fleet shard re-ensures every principal using
it. The answers live in launcher_answers.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from bureau.errors import InputError
from bureau.wire.credentials import CredentialsEvent, content_digest
from bureau.wire.fleet_bundle import SHARD_SEPARATOR, bundle_of
from bureau.wire.launcher_answers import (
    Answer,
    EnsureResult,
    LauncherStatus,
    Listing,
    PrincipalState,
    ProtocolError,
    Refusal,
    ReloginResult,
    SandboxState,
    StopResult,
    TrustResult,
    encode_answer,
    read_answer,
)
from bureau.wire.names import InvalidName, PrincipalRef
from bureau.wire.sandbox_spec import SandboxSpec

__all__ = [
    "ACTIONS",
    "MAX_DEPTH",
    "MAX_MESSAGE",
    "Answer",
    "EnsureRequest",
    "EnsureResult",
    "FleetCredentials",
    "LauncherStatus",
    "ListRequest",
    "Listing",
    "PrincipalState",
    "ProtocolError",
    "Refusal",
    "RelayedCredentials",
    "ReloginRequest",
    "ReloginResult",
    "Request",
    "SandboxState",
    "StatusRequest",
    "StopRequest",
    "StopResult",
    "TrustRequest",
    "TrustResult",
    "encode_answer",
    "nesting_depth",
    "parse_request",
    "read_answer",
    "running_digest",
]

# A credentials event, a fleet shard and a chain of up to 8 templates, each a state event of
# at most 64 KiB: 640 KiB at most, with room to spare.
MAX_MESSAGE = 1024 * 1024
# A credentials event nests five deep (request, content, services, service, headers); the
# bound leaves room and keeps json.loads far from the interpreter's recursion limit.
MAX_DEPTH = 16
ACTIONS = ("status", "list", "ensure", "stop", "relogin", "trust")
MAX_STATEMENTS = 256
_SIGNIFICANT = re.compile(rb'[][{}"\\]')


@dataclass(frozen=True)
class RelayedCredentials:
    """A principal's m.bureau.credentials content as the daemon relays it: read
    (``event``), and kept as it was published (``content``, its JSON text). Its digest is
    how both sides name what runs, and the fields this version does not read travel on
    untouched; the launcher reads the content itself, never trusting a form the daemon
    made of it."""

    event: CredentialsEvent
    content: str

    @classmethod
    def from_json(cls, obj: object, where: str = "credentials") -> RelayedCredentials:
        """InputError naming the field, as CredentialsEvent reads it."""
        event = CredentialsEvent.from_json(obj, where)
        return cls(event, json.dumps(obj))

    def to_json(self) -> dict[str, Any]:
        content: dict[str, Any] = json.loads(self.content)
        return content

    @property
    def digest(self) -> str:
        return content_digest(self.to_json())


def running_digest(credentials: dict[str, Any], fleet: dict[str, Any] | None) -> str:
    """How both sides name what a principal's proxy serves: its credentials content's
    digest, as before fleet bundles; with a fleet shard (``FleetCredentials.to_json``),
    the digest of both, so that a rotated fleet bundle changes it."""
    if fleet is None:
        return content_digest(credentials)
    return content_digest({"credentials": credentials, "fleet_credentials": fleet})


@dataclass(frozen=True)
class FleetCredentials:
    """The fleet bundle shard relayed with a principal's credentials: its state key in the
    fleet room, and its content as published (``content``, JSON text, read as ``event``).
    Read here for shape only; what it is for and whether it is trusted is the launcher's
    to judge."""

    state_key: str
    event: CredentialsEvent
    content: str

    @property
    def name(self) -> str:
        """The bundle's name (shard 0's state key)."""
        return self.state_key.partition(SHARD_SEPARATOR)[0]

    @classmethod
    def from_json(cls, obj: object, where: str = "fleet_credentials") -> FleetCredentials:
        """InputError naming the field."""
        if not isinstance(obj, dict):
            raise InputError(where, None, 'expected {"state_key", "content"}')
        key = obj.get("state_key")
        if not isinstance(key, str) or bundle_of(key) is None:
            raise InputError(where, "state_key", "expected a fleet bundle's state key")
        content = obj.get("content")
        if not isinstance(content, dict):
            raise InputError(where, "content", "expected the m.bureau.credentials content")
        event = CredentialsEvent.from_json(content, f"{where}: content")
        if event.principal:
            raise InputError(f"{where}: content", "principal", 'expected "" (a fleet bundle)')
        return cls(key, event, json.dumps(content))

    def to_json(self) -> dict[str, Any]:
        return {"state_key": self.state_key, "content": json.loads(self.content)}


class _Line:
    action: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action}

    def to_line(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"


def _no_sandbox(obj: dict[str, Any]) -> None:
    if obj.get("sandbox") is not None:
        raise ProtocolError("sandbox: expected an object, with ensure only")


@dataclass(frozen=True)
class _Bare(_Line):
    """A request that is its action and nothing more."""

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Self:
        _no_sandbox(obj)
        return cls()


@dataclass(frozen=True)
class StatusRequest(_Bare):
    action: ClassVar[str] = "status"


@dataclass(frozen=True)
class ListRequest(_Bare):
    action: ClassVar[str] = "list"


@dataclass(frozen=True)
class ReloginRequest(_Bare):
    action: ClassVar[str] = "relogin"


def _principal(obj: dict[str, Any]) -> PrincipalRef:
    value = obj.get("principal")
    if not isinstance(value, str):
        raise ProtocolError("principal: expected a principal's user ID")
    try:
        return PrincipalRef.from_user_id(value)
    except InvalidName as exc:
        raise ProtocolError(f"principal: {exc}") from None


@dataclass(frozen=True)
class EnsureRequest(_Line):
    """Run ``principal``'s proxy from ``credentials``, and its sandbox from ``sandbox``
    (None: no sandbox; one that runs is stopped)."""

    action: ClassVar[str] = "ensure"
    principal: PrincipalRef
    credentials: RelayedCredentials
    sandbox: SandboxSpec | None = None
    assignment: dict[str, Any] | None = None  # the signed entry, as published
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref -> as published
    fleet_credentials: FleetCredentials | None = None

    @property
    def digest(self) -> str:
        """What the launcher reports running once this is served (``running_digest``)."""
        fleet = self.fleet_credentials
        return running_digest(
            self.credentials.to_json(), None if fleet is None else fleet.to_json()
        )

    def to_json(self) -> dict[str, Any]:
        body = {
            **super().to_json(),
            "principal": self.principal.user_id,
            "credentials": self.credentials.to_json(),
        }
        if self.sandbox is not None:
            body["sandbox"] = self.sandbox.to_json()
        if self.assignment is not None:
            body["assignment"] = self.assignment
        if self.templates:
            body["templates"] = self.templates
        if self.fleet_credentials is not None:
            body["fleet_credentials"] = self.fleet_credentials.to_json()
        return body

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EnsureRequest:
        principal = _principal(obj)
        content = obj.get("credentials")
        if not isinstance(content, dict):
            raise ProtocolError("credentials: expected the m.bureau.credentials content")
        try:
            credentials = RelayedCredentials.from_json(content, f"credentials for {principal}")
        except InputError as exc:
            raise ProtocolError(str(exc)) from None
        raw_sandbox = obj.get("sandbox")
        try:
            sandbox = None if raw_sandbox is None else SandboxSpec.from_json(raw_sandbox)
        except InputError as exc:
            raise ProtocolError(f"sandbox for {principal}: {exc}") from None
        assignment = obj.get("assignment")
        if assignment is not None and not isinstance(assignment, dict):
            raise ProtocolError("assignment: expected the m.bureau.machine_config entry")
        templates = obj.get("templates") or {}
        if not isinstance(templates, dict) or not all(
            isinstance(v, dict) for v in templates.values()
        ):
            raise ProtocolError("templates: expected an object of ref -> template content")
        fleet = None
        if obj.get("fleet_credentials") is not None:
            try:
                fleet = FleetCredentials.from_json(
                    obj["fleet_credentials"], f"fleet_credentials for {principal}"
                )
            except InputError as exc:
                raise ProtocolError(str(exc)) from None
        return cls(principal, credentials, sandbox, assignment, templates, fleet)


@dataclass(frozen=True)
class StopRequest(_Line):
    """Stop ``principal``'s sandbox and proxy."""

    action: ClassVar[str] = "stop"
    principal: PrincipalRef

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "principal": self.principal.user_id}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StopRequest:
        principal = _principal(obj)
        _no_sandbox(obj)
        return cls(principal)


@dataclass(frozen=True)
class TrustRequest(_Line):
    """Apply these operator key statements (as published) to the keys the launcher trusts;
    it keeps those a key it trusts signed."""

    action: ClassVar[str] = "trust"
    statements: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "statements": list(self.statements)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrustRequest:
        _no_sandbox(obj)
        statements = obj.get("statements")
        if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
            raise ProtocolError("statements: expected a list of objects")
        if len(statements) > MAX_STATEMENTS:
            raise ProtocolError(f"statements: more than {MAX_STATEMENTS}")
        return cls(tuple(statements))


Request = StatusRequest | ListRequest | EnsureRequest | StopRequest | ReloginRequest | TrustRequest
_READERS: dict[str, Callable[[dict[str, Any]], Request]] = {
    "trust": TrustRequest.from_json,
    "status": StatusRequest.from_json,
    "list": ListRequest.from_json,
    "ensure": EnsureRequest.from_json,
    "stop": StopRequest.from_json,
    "relogin": ReloginRequest.from_json,
}


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
    """A request line, bounded before it is parsed; ProtocolError naming what is wrong.
    Fields a request does not use are ignored."""
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
    read = _READERS.get(action) if isinstance(action, str) else None
    if read is None:
        raise ProtocolError(f"action must be one of {', '.join(ACTIONS)}")
    return read(obj)
