"""Files that matter: atomic writes with their final mode from the start, private-file
reads that refuse loose modes, and the KEY=VALUE format of the credential file and
machine.conf (WIRE.md "Files")."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import sys
from pathlib import Path

from bureau.errors import BureauError, InputError
from bureau.secret import Secret

TEMPORARY_MARK = ".tmp-"


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


def make_dirs(path: Path, mode: int) -> None:
    """``mkdir -p`` where every directory it creates has ``mode`` exactly, whatever the
    umask. Path.mkdir gives the parents it creates 0777 less the umask: world-writable
    under umask 000, where anyone could swap a socket. Existing directories are left as
    they are. Between mkdir and chmod a directory is at most as open as ``mode``."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # made meanwhile by someone else: theirs to set
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


def read_private_file(path: Path, max_bytes: int = 1 << 20, *, strict: bool = False) -> str:
    """Read a file that holds a secret. Refuses directories, other non-regular files and
    modes that let group or others read it; ``strict`` also refuses a symlink and a file
    owned by anyone but this user or root (as ssh does), for files whose content is
    trusted (a bootstrap file, read by root). Every error names the file."""
    where = str(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if strict else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(where, None, "no such file") from None
    except PermissionError:
        raise InputError(where, None, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and strict:
            raise InputError(where, None, "is a symbolic link; give the file itself") from None
        raise InputError(where, None, exc.strerror or "cannot open") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(where, None, "is a directory, expected a file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(where, None, "is not a regular file")
        if strict and st.st_uid not in (os.geteuid(), 0):
            raise InputError(
                where,
                None,
                f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}) or root; "
                "someone else could have written it",
            )
        loose = stat.S_IMODE(st.st_mode) & 0o077
        if loose:
            raise InputError(
                where,
                None,
                f"mode {stat.S_IMODE(st.st_mode):04o} lets other users read it; "
                f"run: chmod 600 {where}",
            )
        if st.st_size > max_bytes:
            raise InputError(where, None, f"is {st.st_size} bytes; at most {max_bytes}")
        raw = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(where, None, "is not UTF-8 text") from None


def read_private_json(path: Path, max_bytes: int = 1 << 20, *, strict: bool = False) -> object:
    text = read_private_file(path, max_bytes, strict=strict)
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


def parse_env(text: str, where: str) -> dict[str, str]:
    """KEY=VALUE lines, ``#`` comments and blank lines ignored, split at the first ``=``.
    Lines end at LF only (a CRLF's CR is trimmed): a CR or other control character inside
    a value stays in it, for the caller to refuse."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(where, f"line {number}", "expected KEY=VALUE")
        if key in result:
            raise InputError(where, key, f"set twice (again on line {number})")
        result[key] = value.strip()
    return result


def render_env(values: dict[str, str], header: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
