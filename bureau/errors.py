"""The one exception tree. Everything here is an expected failure that the edge (a CLI's
main) prints as one line and turns into an exit code; anything else is a bug and keeps its
traceback.

    BureauError                 exit 1: a failure the user can act on
     +-- UsageError             exit 2: a flag or argument is wrong
     +-- InputError             a file or field holds something invalid (names its location)
     +-- MatrixError            the homeserver answered with an error (status, errcode)
     |    +-- MatrixUnreachable the homeserver could not be reached at all
     +-- LostStanding           exit 77: the machine was decommissioned or its token revoked
     +-- KeyStoreError          the machine key could not be stored or loaded
     +-- HubError               the embedded homeserver could not be managed

Messages never contain secret values: callers build them from names, paths and fields.
"""

from __future__ import annotations


class BureauError(Exception):
    exit_code = 1


class UsageError(BureauError):
    exit_code = 2


class InputError(BureauError):
    """Invalid input, located: ``InputError("bootstrap.json", "machine_name", "expected ...")``."""

    def __init__(self, where: str, field: str | None, problem: str) -> None:
        self.where = where
        self.field = field
        self.problem = problem
        location = f"{where}: {field}" if field else where
        super().__init__(f"{location}: {problem}")


class MatrixError(BureauError):
    def __init__(
        self,
        what: str,
        status: int = 0,
        errcode: str = "",
        error: str = "",
        *,
        retry_after: float | None = None,
        soft_logout: bool = False,
    ) -> None:
        self.what = what
        self.status = status
        self.errcode = errcode
        self.error = error
        self.retry_after = retry_after  # seconds the server asked us to wait, if it did
        self.soft_logout = soft_logout
        detail = " ".join(p for p in (str(status) if status else "", errcode, error) if p)
        super().__init__(f"{what}: {detail}" if detail else what)


class MatrixUnreachable(MatrixError):
    pass


class LostStanding(BureauError):
    """The machine's account or membership is gone; restarting cannot help (the daemon's
    unit has RestartPreventExitStatus=77)."""

    exit_code = 77


class KeyStoreError(BureauError):
    pass


class HubError(BureauError):
    pass
