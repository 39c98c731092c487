"""bureau.proxy.orphan on its own: what a check makes of real sockets moved, removed and
replaced in a directory, and when the watch stops the proxy. The launcher is a parent pid
given here; tests/proxy/test_proxy_orphan.py kills a real one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bureau.errors import BureauError
from bureau.proxy import orphan


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Socket paths must fit in 107 bytes, which pytest's temporary paths do not leave."""
    path = Path(tempfile.mkdtemp(prefix="orphan-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def bound(path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        yield s


class Recorded:
    """A logger that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []
        self.wrote = asyncio.Event()

    def debug(self, event: str, **fields: Any) -> None:
        self.lines.append(("debug", event, fields))
        self.wrote.set()

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))
        self.wrote.set()


def test_the_socket_is_ours_where_the_launcher_moves_it(short_dir: Path) -> None:
    temp, final = short_dir / ".a.sock.1234", short_dir / "a.sock"
    with bound(temp):
        check = orphan.Watch.of(temp, final, os.getppid())
        assert check.shown == final
        assert check.socket() == orphan.OURS
        temp.rename(final)
        assert check.socket() == orphan.OURS
        # Another proxy renamed over it (a rotation): the old one's socket is not there.
        with bound(short_dir / ".a.sock.5678"):
            (short_dir / ".a.sock.5678").rename(final)
            assert check.socket() == orphan.REPLACED
        final.unlink()
        assert check.socket() == orphan.REMOVED
        final.write_text("")  # anything else at the path is not its socket either
        assert check.socket() == orphan.REPLACED
        shutil.rmtree(short_dir)  # the run dir deleted
        assert check.socket() == orphan.REMOVED
        assert not check.launcher_gone()


def test_without_installed_as_only_the_bound_path_counts(short_dir: Path) -> None:
    path = short_dir / "a.sock"
    with bound(path):
        check = orphan.Watch.of(path, None, os.getppid())
        assert check.paths == (path,)
        path.rename(short_dir / "b.sock")
        assert check.socket() == orphan.REMOVED


def test_a_bound_path_that_is_not_there_is_one_line(short_dir: Path) -> None:
    with pytest.raises(BureauError, match=r"^--socket .*/nothing\.sock: No such file"):
        orphan.Watch.of(short_dir / "nothing.sock", None, 1)


def _identity(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def _run(check: orphan.Watch, until: Any, seconds: float = 5) -> tuple[asyncio.Event, Recorded]:
    """The watch, every 10 ms, until ``until(stop, log)`` holds after a line it logged."""
    stop, log = asyncio.Event(), Recorded()

    async def go() -> None:
        task = asyncio.create_task(orphan.watch(check, stop, log, period=0.01))
        async with asyncio.timeout(seconds):
            while not until(stop, log) and not task.done():
                log.wrote.clear()
                await log.wrote.wait()  # the watch logs before it stops
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(go())
    return stop, log


def _checks(log: Recorded) -> list[int]:
    return [f["checks"] for _, event, f in log.lines if event == "orphan check"]


def test_one_half_alone_never_stops_the_proxy(short_dir: Path) -> None:
    path = short_dir / "a.sock"
    parent = [100]
    with bound(path):
        check = orphan.Watch([path], _identity(path), 100, getppid=lambda: parent[0])
        # Its launcher alive, its path taken (a rotation's drain): it serves on.
        path.rename(short_dir / "kept.sock")
        stop, log = _run(check, lambda _s, log: 8 in _checks(log))
        assert not stop.is_set()
        assert _checks(log) == [1, 2, 4, 8]  # one line at each power of two, no more
        assert {f["launcher"] for _, _, f in log.lines} == {"alive"}
        assert {f["socket"] for _, _, f in log.lines} == {orphan.REMOVED}
        # Its launcher gone (restarted, say), its socket in place: it serves on.
        (short_dir / "kept.sock").rename(path)
        parent[0] = 1
        stop, log = _run(check, lambda _s, log: 4 in _checks(log))
        assert not stop.is_set()
        assert {f["launcher"] for _, _, f in log.lines} == {"gone"}


def test_both_halves_stop_it_with_one_line_why(short_dir: Path) -> None:
    path = short_dir / "a.sock"
    with bound(path):
        # The launcher died: init (or another subreaper) is the proxy's parent now.
        check = orphan.Watch([path], _identity(path), 100, getppid=lambda: 1)
        path.unlink()
        stop, log = _run(check, lambda stop, _l: stop.is_set())
    assert stop.is_set()
    ((level, event, fields),) = [line for line in log.lines if line[0] != "debug"]
    assert (level, event) == ("warning", "stopping: nobody can reach this proxy")
    assert fields["reason"] == (
        f"its socket path {path} was removed and the launcher that started it (pid 100) is gone"
    )


def test_the_watch_ends_once_the_proxy_stops(short_dir: Path) -> None:
    path = short_dir / "a.sock"
    with bound(path):
        check = orphan.Watch.of(path, None, os.getppid())
        stop, log = asyncio.Event(), Recorded()

        async def go() -> None:
            stop.set()  # SIGTERM came first
            await asyncio.wait_for(orphan.watch(check, stop, log, period=0.01), 1)

        asyncio.run(go())
        assert log.lines == []
