"""Files that matter: atomic writes with their final mode from the start, private-file
reads that refuse loose modes, directories checked for who could write into them, and
the KEY=VALUE format of the credential file and machine.conf (WIRE.md "Files").

Who may own what bureau trusts (``trusted_owners``): this user and root, and, when this
user is root, the ``bureau`` service account, which owns these files on a packaged host
and holds the machine key anyway. Anyone else could have planted what they hold."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import re
import secrets
import stat
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from bureau.errors import BureauError, InputError
from bureau.secret import Secret

TEMPORARY_MARK = ".tmp-"
SERVICE_USER = "bureau"  # the packaged units' User=


class UnsafePath(InputError):
    """A file or directory someone else could have written: a configuration error that
    restarting cannot mend (exit 2, which the units do not restart after)."""

    exit_code = 2


def trusted_owners() -> frozenset[int]:
    me = os.geteuid()
    owners = {me, 0}
    if me == 0:
        with contextlib.suppress(KeyError):
            owners.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    return frozenset(owners)


def _user_text(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _owners_text(owners: Collection[int]) -> str:
    me = os.geteuid()
    others = sorted(uid for uid in owners if uid not in (me, 0))
    text = f"this user (uid {me}) or root"
    return text + "".join(f" or {_user_text(uid)}" for uid in others)


def check_owned_dir(
    path: Path, what: str, fix_mode: int, owners: Collection[int] | None = None
) -> None:
    """Refuse a directory someone else could put files into or rename ours out of: owned
    by anyone but ``owners`` (default trusted_owners()), or writable by group or others.
    Symbolic links are followed (an operator may link the state directory elsewhere; the
    target is what is checked). The error is one line: the path, what is wrong, the fix."""
    allowed = trusted_owners() if owners is None else owners
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(str(path), None, f"{what}: no such directory") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(str(path), None, f"{what} is not a directory")
    _refuse_loose_dir(path, st, what, fix_mode, allowed)


def _refuse_loose_dir(
    path: Path, st: os.stat_result, what: str, fix_mode: int, owners: Collection[int]
) -> None:
    mode = stat.S_IMODE(st.st_mode)
    foreign = st.st_uid not in owners
    loose = bool(mode & 0o022)
    if not foreign and not loose:
        return
    found = []
    if foreign:
        found.append(f"is owned by {_user_text(st.st_uid)}, not by {_owners_text(owners)}")
    if loose:
        found.append(f"has mode {mode:04o} (group or others may write to it)")
    fix = f"chmod {fix_mode:o} {path}"
    if foreign:
        # Chowning alone would adopt whatever the other user put there.
        fix = f"check what it holds, then run: chown {_me()}: {path} && {fix}"
    else:
        fix = f"run: {fix}"
    raise UnsafePath(
        str(path),
        None,
        f"{what} {' and '.join(found)}, so others could plant files in it or replace ours; {fix}",
    )


def check_owned_tree(top: Path, what: str, owners: Collection[int] | None = None) -> None:
    """``top`` and everything below it, as lstat sees it: every entry owned by ``owners``
    (default trusted_owners()), no directory writable by group or others, no symbolic
    link (nothing of ours is one). For the launcher's subdirectories of its run dir, where
    an entry planted while the run dir was loose would outlive the mode's repair."""
    allowed = trusted_owners() if owners is None else owners
    pending = [top]
    while pending:
        path = pending.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # gone meanwhile (a proxy's temporary socket)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(
                str(path), None, f"in {what}: is a symbolic link; remove it: rm {path}"
            )
        if stat.S_ISDIR(st.st_mode):
            _refuse_loose_dir(path, st, f"in {what}: the directory", 0o755, allowed)
            try:
                pending.extend(path.iterdir())
            except FileNotFoundError:
                continue
            except PermissionError:
                raise UnsafePath(
                    str(path), None, f"in {what}: cannot be read; run: chmod u+rx {path}"
                ) from None
        elif st.st_uid not in allowed:
            raise UnsafePath(
                str(path),
                None,
                f"in {what}: owned by {_user_text(st.st_uid)}, not by {_owners_text(allowed)}; "
                f"someone else put it there; remove it: rm {path}",
            )


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a
    part, and never with a looser mode than ``mode`` (umask cannot widen or narrow it).
    A failure (a full disk, a read-only directory) leaves the old file as it was and is
    a BureauError naming the file."""
    path = Path(path)
    try:
        _write_and_rename(path, data, mode)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BureauError(
            f"{path}: cannot write it: {reason}; the previous version, if any, is unchanged"
        ) from None


def make_dirs(path: Path, mode: int, owners: Collection[int] | None = None) -> None:
    """``mkdir -p`` where every directory it creates has ``mode`` exactly, whatever the
    umask. Path.mkdir gives the parents it creates 0777 less the umask: world-writable
    under umask 000, where anyone could swap a socket. Between mkdir and chmod a directory
    is at most as open as ``mode``. A directory asked for that exists already, or one
    made meanwhile by someone else, is checked, not changed: it must pass check_owned_dir
    (an UnsafePath otherwise). The parents it finds are the caller's to vouch for (/run,
    /var/lib, a home); the launcher checks its own directories whole at start."""
    allowed = trusted_owners() if owners is None else owners
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    if not missing:
        check_owned_dir(path, "the directory", mode, allowed)
        return
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            check_owned_dir(directory, "the directory", mode, allowed)
            continue  # made meanwhile, and safe: its mode is its maker's to set
        directory.chmod(mode)


def _write_and_rename(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}{TEMPORARY_MARK}{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        tmp.replace(path)
        fsync_dir(path.parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete what a writer killed mid-write (SIGKILL, power loss) left of atomic_write's
    temporary files; returns their names. Only the directory's own process may call it."""
    removed = []
    for entry in directory.iterdir():
        if entry.name.startswith(".") and TEMPORARY_MARK in entry.name and entry.is_file():
            entry.unlink()
            removed.append(entry.name)
    return sorted(removed)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durably(path: Path) -> None:
    path.unlink()
    fsync_dir(path.parent)


def read_private_bytes(
    path: Path,
    max_bytes: int = 1 << 20,
    *,
    strict: bool = False,
    owners: Collection[int] | None = None,
    private: bool = True,
) -> bytes:
    """Read a file that holds a secret (``private``; else any input file, which is read
    the same careful way without the mode check). Refuses directories, FIFOs and other non-regular
    files (opened non-blocking, so a FIFO cannot hang the reader) and modes that let
    group or others read it; ``strict`` also refuses a symlink and a file owned by anyone
    but ``owners`` (default trusted_owners(): this user or root, as ssh does), for files
    whose content is trusted (the machine key, session.json, a bootstrap file read by
    root). Every error is one line naming the file."""
    where = str(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    flags |= os.O_NOFOLLOW if strict else 0
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(where, None, "no such file") from None
    except PermissionError:
        raise InputError(where, None, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and strict:
            raise UnsafePath(where, None, "is a symbolic link; give the file itself") from None
        raise InputError(where, None, exc.strerror or "cannot open") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(where, None, "is a directory, expected a file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(where, None, f"is {_kind(st.st_mode)}, not a regular file")
        allowed = trusted_owners() if owners is None else owners
        if strict and st.st_uid not in allowed:
            raise UnsafePath(
                where,
                None,
                f"is owned by uid {st.st_uid}, not by {_owners_text(allowed)}; "
                "someone else could have written it",
            )
        loose = stat.S_IMODE(st.st_mode) & 0o077
        if loose and private:
            # Strict files configure a service: exit 2, which systemd does not restart.
            raise (UnsafePath if strict else InputError)(
                where,
                None,
                f"mode {stat.S_IMODE(st.st_mode):04o} lets other users read it; "
                f"run: chmod 600 {where}",
            )
        if st.st_size > max_bytes:
            raise InputError(where, None, f"is {st.st_size} bytes; at most {max_bytes}")
        raw = _read_up_to(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:  # grew since fstat
        raise InputError(where, None, f"is more than {max_bytes} bytes")
    return raw


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks = []
    while limit > 0:
        chunk = os.read(fd, limit)
        if not chunk:
            break
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def read_private_file(
    path: Path,
    max_bytes: int = 1 << 20,
    *,
    strict: bool = False,
    owners: Collection[int] | None = None,
) -> str:
    """read_private_bytes, as UTF-8 text."""
    raw = read_private_bytes(path, max_bytes, strict=strict, owners=owners)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(str(path), None, "is not UTF-8 text") from None


def read_private_json(
    path: Path,
    max_bytes: int = 1 << 20,
    *,
    strict: bool = False,
    owners: Collection[int] | None = None,
) -> object:
    text = read_private_file(path, max_bytes, strict=strict, owners=owners)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(str(path), None, f"not JSON ({exc.msg} at line {exc.lineno})") from None


def read_secret_input(path: str, what: str) -> Secret:
    """A one-line secret from a private file, or from stdin when ``path`` is ``-``."""
    if path == "-":
        text = sys.stdin.readline()
        where = f"{what} (stdin)"
    else:
        text = read_private_file(Path(path))
        where = path
    value = text.strip()
    if not value:
        raise InputError(where, None, "is empty")
    if any(c in value for c in "\r\n\0"):
        raise InputError(where, None, "must hold a single line")
    return Secret(value)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_lines(
    text: str,
    where: str,
    *,
    valid_name: Callable[[str], object] = _ENV_NAME.fullmatch,
    names: str = "letters, digits and _",
) -> Iterator[tuple[str, str, str]]:
    """(``line N``, name, value) for each NAME=VALUE line; ``#`` comments and blank lines
    are skipped, a line is split at its first ``=``. Lines end at LF only (a CRLF's CR is
    trimmed): a CR or other control character inside a value stays in it, for the caller
    to refuse. Errors name the line by number, never by content: a line that is not
    NAME=VALUE may be a raw secret pasted in. ``valid_name``: which names are (``names``
    says so in the error)."""
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name, at = name.strip(), f"line {number}"
        if not sep or not valid_name(name):
            raise InputError(where, at, f"expected NAME=VALUE with a name of {names}")
        if name in seen:
            raise InputError(where, at, f"sets the name line {seen[name]} set")
        seen[name] = number
        yield at, name, value.strip()


def parse_env(text: str, where: str) -> dict[str, str]:
    """The credential file's and machine.conf's format: see env_lines."""
    return {name: value for _, name, value in env_lines(text, where)}


def render_env(values: dict[str, str], header: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
