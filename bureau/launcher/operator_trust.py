"""Only the operator tells this machine what to run and with which credentials (#19): the
launcher acts on an ``ensure`` only when the operator signed what it carries, against
the operator keys pinned in the state dir (wire/operator_keys.py), never against keys
from Matrix.

- the credentials event, signed about its principal;
- the principal's machine-config entry, signed about this machine, naming the principal
  with ``auto_start``;
- for a sandbox, every template it resolves from, signed about its ref: the launcher
  resolves the spec itself from them (template_spec.py, as the daemon does) and runs the
  daemon's spec only when it is the same;
- a fleet bundle shard: only the bundle those templates name (``credential_ref``, in this
  machine's fleet room), signed about ``<fleet room>@<server>:<state key>``; none when
  they name none.

Anything else is refused, whole, before anything changes; the reason names the event and
why (unsigned, a key not trusted here, a removed key, a signature over other content).
Upstream-shaped content carries no signature at all: it is accepted only where the machine
allows it (``--allow-unsigned``), as unbound bundles are; a signature that does not verify
is refused there too. The pinned set is read at each request, so that a key pinned by
``bureau machine doctor --fix --operator-key`` counts at once."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bureau.errors import InputError
from bureau.files import atomic_write
from bureau.launcher.children import LauncherError
from bureau.template_policy import fleet_ref
from bureau.template_spec import Found, assignment_spec
from bureau.wire import names, rooms
from bureau.wire.fleet_bundle import signing_target
from bureau.wire.launcher_protocol import EnsureRequest, TrustResult
from bureau.wire.machine_config import Assignment
from bureau.wire.operator_keys import PINNED_FILE, Statement, TrustedKeys
from bureau.wire.signing import PublicKey, Unsigned, Unverified, template_target, verify
from bureau.wire.template import EVENT_TYPE as TEMPLATE
from bureau.wire.template import Template
from bureau.wire.template_parts import TemplateRef

MAX_PINNED_BYTES = 64 * 1024
UNSIGNED_HINT = "--allow-unsigned accepts upstream's unsigned events"
NO_KEY_HINT = (
    "no operator key is pinned on this machine "
    "(bureau machine doctor --fix --operator-key FILE pins one)"
)


def pinned_path(state_dir: Path) -> Path:
    return state_dir / PINNED_FILE


def load_pinned(state_dir: Path) -> TrustedKeys:
    """The keys this machine trusts; none when nothing was ever pinned. A file that does
    not read is an InputError naming it: the launcher then trusts nothing."""
    path = pinned_path(state_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return TrustedKeys()
    if len(raw) > MAX_PINNED_BYTES:
        raise InputError(str(path), None, f"larger than {MAX_PINNED_BYTES} bytes")
    try:
        obj = json.loads(raw)
    except ValueError:
        raise InputError(str(path), None, "not JSON") from None
    return TrustedKeys.from_json(obj, str(path))


def save_pinned(state_dir: Path, trusted: TrustedKeys) -> None:
    """0644: public keys, which doctors and people may read."""
    body = json.dumps(trusted.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(pinned_path(state_dir), body.encode(), 0o644)


def pin_initial(state_dir: Path, keys: Mapping[str, PublicKey]) -> bool:
    """First boot: pin ``keys`` unless a set is pinned already (a resumed boot, or keys
    pinned by hand), which is never replaced. Returns whether it wrote."""
    if not keys or pinned_path(state_dir).exists():
        return False
    save_pinned(state_dir, TrustedKeys(dict(keys)))
    return True


class OperatorTrust:
    def __init__(self, state_dir: Path, machine_user: str, *, allow_unsigned: bool) -> None:
        self._state_dir = state_dir
        self._machine = machine_user
        self._server = machine_user.rsplit(":", 1)[1] if ":" in machine_user else ""
        localpart = machine_user.split(":", 1)[0].lstrip("@")
        self._fleet = names.fleet_of_entity(localpart) if "/fleet/" in localpart else ""
        self.allow_unsigned = allow_unsigned

    def pinned(self) -> TrustedKeys:
        try:
            return load_pinned(self._state_dir)
        except InputError as exc:
            raise LauncherError(f"operator keys: {exc}") from None

    def _signed(
        self, content: Mapping[str, Any], kind: str, target: str, where: str, keys: TrustedKeys
    ) -> bool:
        """Whether ``content`` is signed by a pinned key (True), or unsigned where that is
        allowed (False); LauncherError otherwise."""
        try:
            verify(content, kind, target, keys.keys, where, revoked=keys.revoked)
        except Unsigned as exc:
            if self.allow_unsigned:
                return False
            raise LauncherError(f"{exc}; refused ({UNSIGNED_HINT})") from None
        except Unverified as exc:
            hint = f"; {NO_KEY_HINT}" if not keys.keys else ""
            raise LauncherError(f"{exc}; refused{hint}") from None
        return True

    def check_ensure(self, request: EnsureRequest) -> None:
        """Whether the operator signed everything ``request`` asks for; LauncherError
        naming the first thing that is not."""
        keys = self.pinned()
        principal = request.principal.user_id
        self._signed(
            request.credentials.to_json(),
            rooms.CREDENTIALS,
            principal,
            f"credentials for {principal}",
            keys,
        )
        entry = request.assignment
        if entry is None:
            if not self.allow_unsigned:
                raise LauncherError(
                    f"{principal}: no signed assignment came with the request; refused"
                )
            # The daemon's spec, checked by sandbox_policy as always; no template to name
            # a fleet bundle.
            self.check_fleet(request, "", keys)
            return
        where = f"assignment of {principal}"
        signed = self._signed(entry, rooms.MACHINE_CONFIG, self._machine, where, keys)
        try:
            assignment = Assignment.from_json(entry, where)
        except InputError as exc:
            raise LauncherError(str(exc)) from None
        if assignment.principal != principal or not assignment.auto_start:
            raise LauncherError(f"{where}: it does not start {principal} here; refused")
        found = None
        if request.sandbox is not None and signed:
            found = self._resolve(request, assignment, keys)
            if found is None or found.spec.digest != request.sandbox.digest:
                raise LauncherError(
                    f"sandbox for {principal}: the spec sent is not what the signed "
                    "assignment and templates give; refused"
                )
        elif request.sandbox is not None:
            # An unsigned assignment: the daemon's spec, as always; its templates still
            # say which fleet bundle (if any) goes with it.
            with contextlib.suppress(LauncherError):
                found = self._resolve(request, assignment, keys)
        self.check_fleet(request, found.credential_ref if found is not None else "", keys)

    def _resolve(
        self, request: EnsureRequest, assignment: Assignment, keys: TrustedKeys
    ) -> Found | None:
        def fetch(ref: TemplateRef) -> Template | None:
            content = request.templates.get(str(ref))
            if content is None:
                return None
            target = template_target(ref.room, ref.name, ref.server or self._server)
            self._signed(content, TEMPLATE, target, f"template {ref}", keys)
            return Template.from_json(content, str(ref))

        try:
            return assignment_spec(assignment, fetch, os.path.isdir)
        except InputError as exc:
            raise LauncherError(f"sandbox for {request.principal.user_id}: {exc}") from None

    def check_fleet(self, request: EnsureRequest, credential_ref: str, keys: TrustedKeys) -> None:
        """The fleet bundle shard sent is the one ``credential_ref`` (from the templates
        checked above) names, signed by the operator; none is sent when it names none."""
        principal = request.principal.user_id
        fleet = request.fleet_credentials
        if not credential_ref:
            if fleet is not None:
                raise LauncherError(
                    f"fleet bundle {fleet.state_key} for {principal}: its signed templates "
                    "name no fleet bundle; refused"
                )
            return
        try:
            ref = fleet_ref(credential_ref, self._fleet, self._server, f"template of {principal}")
        except InputError as exc:
            raise LauncherError(str(exc)) from None
        if fleet is None:
            raise LauncherError(
                f"{principal}: its template names fleet bundle {ref.name}, which did not come "
                "with the request; refused"
            )
        where = f"fleet bundle {fleet.state_key} for {principal}"
        if fleet.name != ref.name:
            raise LauncherError(
                f"{where}: not {ref.name}, the bundle its signed templates name; refused"
            )
        room = names.fleet_room_localpart(self._fleet)
        target = signing_target(room, self._server, fleet.state_key)
        self._signed(fleet.to_json()["content"], rooms.CREDENTIALS, target, where, keys)

    def apply(self, statements: Iterable[dict[str, Any]], log: Any) -> TrustResult:
        """Statements relayed from ``m.bureau.operator_keys``: those a pinned key signed
        change the pinned set (each change logged); the others are ignored."""
        keys = self.pinned()
        read = []
        for index, raw in enumerate(statements):
            try:
                read.append(Statement.from_json(raw, f"statements[{index}]"))
            except InputError:
                continue
        after, changes = keys.apply(read)
        changed = after != keys
        if changed:
            save_pinned(self._state_dir, after)
        for change in changes:
            log.warning("operator keys", change=change)
        return TrustResult(tuple(sorted(after.keys)), changed)
