"""Where every entry point meets the user: an argument parser whose errors are one line
(exit 2), and the one place that turns a BureauError into one line on stderr and its
exit code. Anything else escaping is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from bureau.errors import BureauError

EXIT_INTERRUPTED = 128 + signal.SIGTERM


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; unwinds through finally blocks like KeyboardInterrupt."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        raise SystemExit(2)


def raise_interrupted_on_signals() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(prog: str, body: Callable[[], int]) -> NoReturn:
    try:
        code = body()
    except BureauError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        code = exc.exit_code
    except Interrupted as exc:
        sys.stderr.write(f"{prog}: stopped by {exc}; run it again to resume\n")
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        code = 130
    sys.stdout.flush()
    raise SystemExit(code)
