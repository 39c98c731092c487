"""Logging for every bureau process: structlog, human-readable on a terminal, JSON lines
otherwise. Secrets render as <redacted> through their type (bureau.secret), tracebacks
never carry frame locals, and matrix-nio's loggers (which log whole responses, tokens
included, at DEBUG) are held at WARNING whatever level is asked for."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")
ENV_LEVEL = "BUREAU_LOG_LEVEL"
_QUIET_LIBRARIES = ("nio", "nio.responses", "nio.client", "aiohttp.access")


def resolve_level(flag: str | None) -> str:
    level = (flag or os.environ.get(ENV_LEVEL) or "info").lower()
    if level not in LEVELS:
        raise ValueError(f"{level!r} is not one of {', '.join(LEVELS)}")
    return level


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    renderer: Any
    if out.isatty():
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not out.isatty():
        processors.append(structlog.processors.format_exc_info)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=out, force=True)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def get(name: str) -> Any:
    return structlog.get_logger(name).bind(logger=name)
