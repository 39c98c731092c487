"""The doctor's view of operator signatures (#19): which operator keys this machine pins
(``/var/lib/bureau/operator-keys.json``), and whether its launcher accepts unsigned
events (``--allow-unsigned`` in ``BUREAU_LAUNCHER_OPTIONS``, as for unbound bundles).

A machine enrolled before signatures pins no key and refuses every ensure; ``--fix
--operator-key FILE`` pins the key in FILE (the ``.pub`` that `bureau matrix setup` writes
beside the credential file) here, locally: never through the daemon or Matrix. A key
this machine revoked stays revoked."""

from __future__ import annotations

import os
from collections.abc import Iterator

from bureau.doctor.bundle_checks import VARIABLE
from bureau.doctor.findings import Finding, fail, not_applicable, ok
from bureau.doctor.host_checks import MACHINE_CONF, STATE_DIR
from bureau.errors import InputError
from bureau.files import parse_env
from bureau.host import Host
from bureau.launcher.operator_trust import load_pinned, pinned_path, save_pinned
from bureau.wire.signing import PublicKey

FLAG = "--allow-unsigned"
KEYS = "operator keys"
UNSIGNED = "unsigned events"


class SigningChecks:
    def __init__(self, host: Host, operator_key: PublicKey | None) -> None:
        self.host = host
        self.operator_key = operator_key

    def _pin(self) -> None:
        assert self.operator_key is not None  # noqa: S101 -- only offered with a key
        state = self.host.path(STATE_DIR)
        save_pinned(state, load_pinned(state).with_key(self.operator_key))
        owner = state.stat()
        os.chown(pinned_path(state), owner.st_uid, owner.st_gid)

    def operator_keys(self) -> Iterator[Finding]:
        state = self.host.path(STATE_DIR)
        if not state.is_dir():
            yield not_applicable(KEYS, f"no {STATE_DIR} yet (first boot pins them)")
            return
        try:
            pinned = load_pinned(state)
        except InputError as exc:
            yield fail(KEYS, str(exc), "remove it, then --fix --operator-key FILE")
            return
        except PermissionError:
            yield fail(KEYS, f"{STATE_DIR} is not readable", "run the doctor as root")
            return
        wanted = self.operator_key
        fix = self._pin if wanted is not None else None
        if wanted is not None and wanted.key_id in pinned.revoked:
            yield fail(KEYS, f"{wanted.key_id} was revoked on this machine", "use a key in force")
        elif wanted is not None and wanted.key_id not in pinned.keys:
            yield fail(KEYS, f"{wanted.key_id} is not pinned", "--fix pins it", fix)
        elif not pinned.keys:
            yield fail(
                KEYS,
                "none pinned: the launcher refuses every credentials event, assignment and "
                "template",
                "bureau machine doctor --fix --operator-key FILE (the .pub beside the "
                "operator's credential file)",
            )
        else:
            revoked = f"; revoked {', '.join(sorted(pinned.revoked))}" if pinned.revoked else ""
            yield ok(KEYS, f"pinned {', '.join(sorted(pinned.keys))}{revoked}")

    def unsigned(self) -> Iterator[Finding]:
        try:
            text = self.host.path(MACHINE_CONF).read_text()
        except FileNotFoundError:
            yield not_applicable(UNSIGNED, f"no {MACHINE_CONF} yet (the launcher refuses them)")
            return
        try:
            options = parse_env(text, str(MACHINE_CONF)).get(VARIABLE, "")
        except InputError as exc:
            yield fail(UNSIGNED, str(exc), f"correct {MACHINE_CONF}")
            return
        if FLAG in options.split():
            yield ok(
                UNSIGNED,
                f"accepted ({FLAG} in {VARIABLE}): whoever can write the machine's rooms, or "
                "a subverted daemon, can choose what runs with upstream-shaped events",
            )
        else:
            yield ok(UNSIGNED, f"refused (the default; {FLAG} in {VARIABLE} accepts them)")
