"""bureau-sandbox-log: a sandbox's output, line by line, to the journal with
``SYSLOG_IDENTIFIER=bureau-sandbox`` and ``BUREAU_PRINCIPAL=<user id>`` (``journalctl
BUREAU_PRINCIPAL=@...``), or, where there is no journal, appended to a log file.

Forked by the proxy template for each sandbox the launcher starts, with the read end of
the sandbox's stdout and stderr as its stdin; it ends when the sandbox has closed them.
It outlives a launcher restart as the sandbox does, and keeps the launcher's stderr only
when that is the journal. Lines are cut at MAX_LINE bytes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from bureau import journal
from bureau.log import stderr_is_journal

MAX_LINE = 16 * 1024
IDENTIFIER = "bureau-sandbox"


def _lines(fd: int) -> Iterator[bytes]:
    pending = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending or len(pending) >= MAX_LINE:
            cut = pending.find(b"\n")
            cut = MAX_LINE if cut < 0 or cut > MAX_LINE else cut
            yield pending[:cut]
            pending = pending[cut + 1 if pending[cut : cut + 1] == b"\n" else cut :]
    if pending:
        yield pending


def main(argv: list[str]) -> None:
    """argv: PRINCIPAL LOGFILE. Never returns."""
    principal, logfile = argv[0], argv[1]
    stream_is_journal = stderr_is_journal(sys.stderr)
    to_journal = stream_is_journal or bool(os.environ.get(journal.SOCKET_ENV))
    if not stream_is_journal:
        # The relay outlives the launcher, as the sandbox does. The launcher's stderr, when
        # it is not the journal, is a pipe or a terminal: holding it would keep whoever
        # reads it waiting for the sandbox to end.
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        os.dup2(devnull, 2)
        os.close(devnull)
    logger = journal.JournalLogger(journal.socket_path(), sys.stderr) if to_journal else None
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    out = None if to_journal else os.open(logfile, flags, 0o600)
    for raw in _lines(0):
        line = raw.decode("utf-8", "replace")
        if logger is not None:
            logger.msg(
                [
                    ("MESSAGE", line),
                    ("PRIORITY", "6"),
                    ("SYSLOG_IDENTIFIER", IDENTIFIER),
                    ("BUREAU_PRINCIPAL", principal),
                ]
            )
        elif out is not None:
            os.write(out, f"{principal}: {line}\n".encode())
    os._exit(0)
