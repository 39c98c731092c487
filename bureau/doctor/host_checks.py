"""The doctor's checks of the host itself: the bureau user and group, the directories,
the binaries the units run, machine.conf, the unit files, their enablement and state,
and the machine key. Every path goes through Host, so they run under --root."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from bureau import age_keys, key_store, unit_files
from bureau.daemon.offline_cache import FILE_NAME as OFFLINE_CACHE
from bureau.doctor.findings import Finding, fail, not_applicable, ok
from bureau.errors import BureauError, InputError
from bureau.files import atomic_write, parse_env, render_env
from bureau.host import Host, run_tool, tool_failed
from bureau.machine_state import load_session
from bureau.secret import Secret
from bureau.wire.files import MachineConf

Fix = Callable[[], object]

USER = "bureau"
OPERATORS = "bureau-operators"
STATE_DIR = Path("/var/lib/bureau")
RUN_DIR = Path("/run/bureau")
MACHINE_CONF = Path("/etc/bureau/machine.conf")
CONF_HEADER = (
    "Bureau machine settings: the EnvironmentFile of bureau-sandboxd, bureau-launcher and "
    "bureau-daemon."
)


def trusted(host: Host) -> frozenset[int]:
    """Who may own the machine's files, as the doctor sees them: root, whoever runs it,
    and this host's bureau account (the root's own /etc/passwd under --root)."""
    account = host.user(USER)
    return frozenset({0, os.geteuid(), *([account.id] if account else [])})


class HostChecks:
    def __init__(self, host: Host, start_services: bool = True) -> None:
        self.host = host
        self.start_services = start_services

    # -- accounts ------------------------------------------------------------------------

    def user(self) -> Iterator[Finding]:
        name = f"user {USER}"
        if self.host.user(USER) is not None:
            yield ok(name)
            return
        yield fail(name, "missing", "create it: useradd --system --user-group", self._add_user)

    def _add_user(self) -> None:
        self._tool(
            "useradd",
            *self.host.prefix_args(),
            "--system",
            "--user-group",
            "--home-dir",
            str(STATE_DIR),
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "Bureau launcher and daemon",
            USER,
        )

    def operators_group(self) -> Iterator[Finding]:
        name = f"group {OPERATORS}"
        if self.host.group(OPERATORS) is not None:
            yield ok(name)
            return
        yield fail(
            name,
            "missing",
            "create it: groupadd --system",
            lambda: self._tool("groupadd", *self.host.prefix_args(), "--system", OPERATORS),
        )

    def _tool(self, program: str, *args: str) -> None:
        result = run_tool(program, *args)
        if result.returncode != 0:
            raise BureauError(f"{program}: {tool_failed(result)}")

    # -- directories and files -----------------------------------------------------------

    def directories(self) -> Iterator[Finding]:
        for wanted in unit_files.directories():
            path = self.host.path(wanted.path)
            name = f"directory {wanted.path}"
            want = f"{wanted.mode:04o} {wanted.user}:{wanted.group}"
            fix = self._directory_fix(wanted)
            try:
                st = path.stat()
            except FileNotFoundError:
                yield fail(name, "missing", f"create it {want}", fix)
                continue
            if not stat.S_ISDIR(st.st_mode):
                yield fail(name, "is not a directory", "move it away and run --fix")
                continue
            have = (
                f"{stat.S_IMODE(st.st_mode):04o} "
                f"{self.host.name_of_uid(st.st_uid)}:{self.host.name_of_gid(st.st_gid)}"
            )
            if have != want:
                yield fail(name, f"is {have}", f"make it {want}", fix)
            else:
                yield ok(name, want)

    def _directory_fix(self, wanted: unit_files.Directory) -> Fix:
        def fix() -> None:
            path = self.host.path(wanted.path)
            path.mkdir(parents=True, exist_ok=True, mode=wanted.mode)
            self._chown(path, wanted.user, wanted.group)
            path.chmod(wanted.mode)

        return fix

    def _chown(self, path: Path, user: str, group: str) -> None:
        account, team = self.host.user(user), self.host.group(group)
        if account is None or team is None:
            raise BureauError(f"{path}: user {user} or group {group} does not exist yet")
        os.chown(path, account.id, team.id, follow_symlinks=False)

    def private_files(self) -> Iterator[Finding]:
        """session.json, the key and the daemon's offline cache: 0600 and bureau's, or the
        units cannot read them.
        One owned by someone else (neither root nor bureau) is not handed to bureau: that
        would make a key or session they planted the machine's."""
        state = self.host.path(STATE_DIR)
        owners = trusted(self.host)
        private = ("session.json", key_store.SEALED_FILE, key_store.PLAIN_FILE, OFFLINE_CACHE)
        for file_name in private:
            path = state / file_name
            try:
                st = path.lstat()
            except (FileNotFoundError, PermissionError):
                continue  # absent ones are the session and key checks' business
            name = f"file {STATE_DIR / file_name}"
            owner = self.host.name_of_uid(st.st_uid)
            have = f"{stat.S_IMODE(st.st_mode):04o} {owner}"
            if not stat.S_ISREG(st.st_mode):
                yield fail(name, "is not a regular file", f"remove it: rm {STATE_DIR / file_name}")
            elif st.st_uid not in owners:
                yield fail(
                    name,
                    f"is {have}: {owner} could have written it",
                    "if it is not this machine's, remove it and provision the machine again; "
                    f"else chown {USER}: {STATE_DIR / file_name}",
                )
            elif have != f"0600 {USER}":
                yield fail(name, f"is {have}", f"make it 0600 {USER}", self._private_fix(path))
            else:
                yield ok(name, f"0600 {USER}")

    def _private_fix(self, path: Path) -> Fix:
        def fix() -> None:
            self._chown(path, USER, USER)
            path.chmod(0o600)

        return fix

    def binaries(self) -> Iterator[Finding]:
        for binary in unit_files.binaries():
            path = self.host.path(binary)
            name = f"program {binary}"
            if path.is_file() and os.access(path, os.X_OK):
                yield ok(name)
                continue
            installed = Path(sys.executable).parent / Path(binary).name
            if installed.is_file():
                yield fail(name, "missing", f"link it to {installed}", self._link(path, installed))
            else:
                yield fail(name, "missing", "install bureau (script/bootstrap-machine)")

    @staticmethod
    def _link(path: Path, target: Path) -> Fix:
        def fix() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                path.unlink()
            path.symlink_to(target)

        return fix

    def machine_conf(self) -> Iterator[Finding]:
        name = f"file {MACHINE_CONF}"
        path = self.host.path(MACHINE_CONF)
        from_session = self._conf_from_session()
        fix = None
        if from_session is not None:
            body = render_env(from_session.to_env(), CONF_HEADER).encode()
            fix = lambda: atomic_write(path, body, 0o644)  # noqa: E731
        remedy = "written from session.json" if fix else "run script/bootstrap-machine"
        try:
            text = path.read_text()
        except FileNotFoundError:
            yield fail(name, "missing", remedy, fix)
            return
        try:
            conf = MachineConf.from_env(parse_env(text, str(MACHINE_CONF)), str(MACHINE_CONF))
        except InputError as exc:
            yield fail(
                name,
                exc.problem if exc.field is None else f"{exc.field}: {exc.problem}",
                remedy,
                fix,
            )
            return
        if from_session is not None and conf != from_session:
            yield fail(name, "names another machine or homeserver than session.json", remedy, fix)
            return
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != 0o644:
            yield fail(name, f"mode {mode:04o}", "make it 0644", lambda: path.chmod(0o644))
            return
        yield ok(name, conf.machine_name)

    def _conf_from_session(self) -> MachineConf | None:
        try:
            session = load_session(self.host.path(STATE_DIR), trusted(self.host))
        except (InputError, PermissionError):
            return None
        return MachineConf.from_session(session) if session is not None else None

    # -- systemd -------------------------------------------------------------------------

    def units(self) -> Iterator[Finding]:
        installs = [(n, unit_files.UNIT_DIR / n) for n in unit_files.SERVICES]
        installs.append((unit_files.TMPFILES, unit_files.TMPFILES_PATH))
        for packaged_name, target in installs:
            path = self.host.path(target)
            name = f"unit file {target}"
            wanted = unit_files.packaged(packaged_name)
            try:
                have = path.read_text()
            except FileNotFoundError:
                yield fail(name, "missing", "install the packaged one", self._install(path, wanted))
                continue
            if have != wanted:
                yield fail(
                    name,
                    "differs from the one this bureau ships",
                    "install the packaged one (own settings belong in a drop-in)",
                    self._install(path, wanted),
                )
            else:
                yield ok(name, "as packaged")

    def _install(self, path: Path, text: str) -> Fix:
        def fix() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text.encode(), 0o644)
            if self.host.systemd_running:
                self._tool("systemctl", "daemon-reload")
                if path.name.endswith(".conf"):
                    self._tool("systemd-tmpfiles", "--create", str(path))

        return fix

    def enabled(self) -> Iterator[Finding]:
        for unit in unit_files.SERVICES:
            name = f"{unit} enabled"
            if not self.host.path(unit_files.UNIT_DIR / unit).exists():
                yield fail(name, "not installed", "install it first")
                continue
            state = self.host.systemctl("is-enabled", unit).stdout.strip()
            if state == "enabled":
                yield ok(name)
            else:
                yield fail(
                    name,
                    state or "unknown",
                    f"systemctl enable {unit}",
                    partial(self._systemctl, "enable", unit),
                )

    def active(self) -> Iterator[Finding]:
        for unit in unit_files.SERVICES:
            name = f"{unit} active"
            if not self.host.systemd_running:
                yield not_applicable(name, "systemd is not running here")
                continue
            if not self.start_services:
                yield not_applicable(name, "not started (--no-start)")
                continue
            state = self.host.systemctl("is-active", unit).stdout.strip()
            if state == "active":
                yield ok(name)
            else:
                yield fail(
                    name,
                    state or "unknown",
                    f"systemctl start {unit}; journalctl -u {unit} says why it stopped",
                    partial(self._systemctl, "start", unit),
                )

    def _systemctl(self, *args: str) -> None:
        result = self.host.systemctl(*args)
        if result.returncode != 0:
            raise BureauError(f"systemctl {' '.join(args)}: {tool_failed(result)}")

    # -- the key -------------------------------------------------------------------------

    def machine_key(self) -> Iterator[Finding]:
        state = self.host.path(STATE_DIR)
        name = "machine key"
        try:
            public = (state / key_store.PUBLIC_FILE).read_text().strip()
        except FileNotFoundError:
            yield fail(name, f"no {key_store.PUBLIC_FILE}", "run the launcher's first boot")
            return
        except PermissionError:
            yield fail(name, f"{STATE_DIR} is not readable", "run the doctor as root")
            return
        sealed = state / key_store.SEALED_FILE
        plain = state / key_store.PLAIN_FILE
        if not sealed.exists() and not plain.exists():
            yield fail(name, "no private key", "the key is lost: decommission and provision again")
            return
        try:
            found = key_store.load(state, None, trusted(self.host))
            if found is None:
                raise BureauError("vanished while checked")
            secret, source = found
            derived = age_keys.public_key_of(secret, source)
        except BureauError as exc:
            yield fail(name, f"cannot be read: {exc}", "the key is lost if this persists")
            return
        if derived != public:
            yield fail(
                name,
                f"{source} does not match {key_store.PUBLIC_FILE}",
                "the key is lost: decommission and provision again",
            )
            return
        if not sealed.exists():
            yield fail(
                name,
                f"stored plain in {key_store.PLAIN_FILE}; the unit loads {key_store.SEALED_FILE}",
                "seal it with systemd-creds",
                lambda: self._seal(state, secret, plain),
            )
            return
        yield ok(name, f"sealed, decrypts to {public}")

    def _seal(self, state: Path, secret: Secret, plain: Path) -> None:
        sealed = key_store.store(state, secret, key_store.KeyStorage.SYSTEMD_CREDS)
        self._private_fix(sealed)()  # written by root: the launcher's, as the plain one was
        plain.unlink()
