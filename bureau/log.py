"""Logging for every bureau process, through structlog, to one of three sinks:

- the systemd journal, when stderr *is* the journal (``$JOURNAL_STREAM`` names stderr's
  device and inode, as systemd sets it for a service): each entry is one datagram in the
  journal's native protocol (bureau.journal) with structured fields, so that
  ``journalctl -u bureau-daemon BUREAU_PRINCIPAL=@...`` finds one principal's story;
- a terminal: human-readable lines;
- anything else (a pipe, a file): JSON lines.

Secrets render as <redacted> through their type (bureau.secret), tracebacks never carry
frame locals, and matrix-nio's loggers (which log whole responses, tokens included, at
DEBUG) are held at WARNING whatever level is asked for.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

from bureau import journal

LEVELS = ("debug", "info", "warning", "error", "critical")
ENV_LEVEL = "BUREAU_LOG_LEVEL"
_QUIET_LIBRARIES = ("nio", "nio.responses", "nio.client", "aiohttp.access")


def resolve_level(flag: str | None) -> str:
    level = (flag or os.environ.get(ENV_LEVEL) or "info").lower()
    if level not in LEVELS:
        raise ValueError(f"{level!r} is not one of {', '.join(LEVELS)}")
    return level


def stderr_is_journal(stream: TextIO) -> bool:
    """systemd sets JOURNAL_STREAM=<dev>:<ino> of the stream it connected; a child that
    inherited the variable but not the stream (redirected) must not match."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return bool(wanted) and wanted == f"{st.st_dev}:{st.st_ino}"


def configure(level: str = "info", stream: TextIO | None = None, identifier: str = "") -> None:
    out = stream or sys.stderr
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    logger_factory: Any
    if stderr_is_journal(out):
        processors += [
            structlog.processors.CallsiteParameterAdder(
                [
                    structlog.processors.CallsiteParameter.PATHNAME,
                    structlog.processors.CallsiteParameter.LINENO,
                    structlog.processors.CallsiteParameter.FUNC_NAME,
                ]
            ),
            structlog.processors.format_exc_info,
            journal.JournalRenderer(identifier or _program_name()),
        ]
        logger_factory = journal.JournalLoggerFactory(journal.socket_path(), out)
    elif out.isatty():
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
        logger_factory = structlog.PrintLoggerFactory(out)
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
        logger_factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=out, force=True)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def _program_name() -> str:
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "bureau"


def get(name: str) -> Any:
    return structlog.get_logger(name).bind(logger=name)
