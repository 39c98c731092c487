"""Atomic writes, private-file reads and the KEY=VALUE format, on a real filesystem."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from bureau.errors import InputError
from bureau.files import atomic_write, make_dirs, parse_env, read_private_file, render_env


def test_atomic_write_sets_final_mode_whatever_the_umask(tmp_path: Path) -> None:
    os.umask(0o000)
    path = tmp_path / "secret"
    atomic_write(path, b"one", 0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.umask(0o077)
    atomic_write(path, b"two", 0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_make_dirs_gives_every_directory_it_creates_the_mode(tmp_path: Path) -> None:
    """Parents too, under umask 000 and 077 alike; what existed keeps its mode."""
    (tmp_path / "kept").mkdir(mode=0o711)
    (tmp_path / "kept").chmod(0o711)
    for umask, mode in ((0o000, 0o755), (0o077, 0o750)):
        os.umask(umask)
        leaf = tmp_path / "kept" / f"u{umask:o}" / "a" / "b"
        make_dirs(leaf, mode)
        made = [leaf.parent.parent, leaf.parent, leaf]
        assert [stat.S_IMODE(d.stat().st_mode) for d in made] == [mode] * 3
        make_dirs(leaf, 0o700)  # exists: unchanged
        assert stat.S_IMODE(leaf.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "kept").stat().st_mode) == 0o711
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "file", 0o755)


def test_make_dirs_refuses_an_existing_directory_someone_else_could_write(
    tmp_path: Path,
) -> None:
    """An existing directory is checked, not silently taken: another owner, or a mode that
    lets group or others write, is one line naming it and the fix. The packaged run dir's
    0750 passes."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 4242, 4242)
    with pytest.raises(InputError, match=rf"^{theirs}: the directory is owned by uid 4242, "):
        make_dirs(theirs, 0o755)
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(InputError, match=rf"has mode 0777 .*; run: chmod 750 {loose}$"):
        make_dirs(loose, 0o750)
    packaged = tmp_path / "run"
    packaged.mkdir()
    packaged.chmod(0o750)
    make_dirs(packaged, 0o755)
    make_dirs(packaged / "fleet" / "prod", 0o755)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opened non-blocking and refused by type: a FIFO nobody writes to would otherwise
    hang the reader for good (a thread is the guard: the test fails, never hangs)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            read_private_file(fifo, strict=True)
        except InputError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    blocked = reader.is_alive()
    if blocked:  # release it: a writer that closes at once gives the reader EOF
        os.close(os.open(fifo, os.O_WRONLY))
    assert not blocked, "read_private_file blocked on a FIFO"
    assert [str(e) for e in errors] == [f"{fifo}: is a FIFO, not a regular file"]


def test_atomic_write_leaves_old_file_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"old", 0o600)
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes", 0o600)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_private_file_refusals(tmp_path: Path) -> None:
    ok = tmp_path / "ok"
    ok.write_text("x")
    ok.chmod(0o600)
    assert read_private_file(ok) == "x"
    loose = tmp_path / "loose"
    loose.write_text("x")
    loose.chmod(0o644)
    with pytest.raises(InputError, match=r"mode 0644 lets other users read it; run: chmod 600"):
        read_private_file(loose)
    with pytest.raises(InputError, match="is a directory"):
        read_private_file(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        read_private_file(tmp_path / "missing")


def test_env_format() -> None:
    text = "# comment\n\nA=1\nB = x=y \n"
    assert parse_env(text, "f") == {"A": "1", "B": "x=y"}
    assert parse_env(render_env({"A": "1", "B": "x=y"}, "head\nline"), "f") == {
        "A": "1",
        "B": "x=y",
    }
    with pytest.raises(InputError, match="f: line 2: expected NAME=VALUE"):
        parse_env("A=1\nnonsense\n", "f")
    with pytest.raises(InputError, match="f: line 2: sets the name line 1 set"):
        parse_env("A=1\nA=2\n", "f")
    # A pasted token with base64 padding looks like NAME=VALUE: named by line, not echoed.
    with pytest.raises(InputError) as refused:
        parse_env("A=1\nsk-live-canary==\n", "f")
    assert str(refused.value) == (
        "f: line 2: expected NAME=VALUE with a name of letters, digits and _"
    )
