"""Atomic writes, private-file reads and the KEY=VALUE format, on a real filesystem."""

from __future__ import annotations

import os
import stat
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
    with pytest.raises(InputError, match="f: line 2: expected KEY=VALUE"):
        parse_env("A=1\nnonsense\n", "f")
    with pytest.raises(InputError, match="f: A: set twice"):
        parse_env("A=1\nA=2\n", "f")
