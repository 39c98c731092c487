"""What a doctor check reports, and the loop that checks, fixes and checks again. Pure
apart from calling the checks and fixes it is given.

A check is a function returning Findings. A failing Finding may carry a ``fix``; with
--fix each one is applied as soon as its check fails (a directory's owner can only be
set once the user exists), then that check runs again. A fix that fails is reported
beside its check and the doctor goes on. Fixes are idempotent: a second --fix finds
nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bureau.errors import BureauError


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Finding:
    name: str
    status: Status
    detail: str = ""
    remedy: str = ""
    fix: Callable[[], object] | None = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.status is not Status.FAIL

    def line(self) -> str:
        label = self.status.value if self.passed else "FAIL"
        text = f"{label:<5} {self.name}"
        if self.detail:
            text += f": {self.detail}"
        if not self.passed and self.remedy:
            text += f" (fix: {self.remedy})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "remedy": self.remedy if not self.passed else "",
            "fixable": self.fix is not None,
        }


def ok(name: str, detail: str = "") -> Finding:
    return Finding(name, Status.OK, detail)


def fail(
    name: str, detail: str, remedy: str = "", fix: Callable[[], object] | None = None
) -> Finding:
    return Finding(name, Status.FAIL, detail, remedy, fix)


def not_applicable(name: str, detail: str) -> Finding:
    return Finding(name, Status.NOT_APPLICABLE, detail)


Check = Callable[[], Iterable[Finding]]


@dataclass
class Report:
    findings: list[Finding]
    fixed: list[str] = field(default_factory=list)
    fix_errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [f.to_json() for f in self.findings],
            "fixed": self.fixed,
            "fix_errors": self.fix_errors,
        }

    def lines(self) -> list[str]:
        lines = [f"fixed {what}" for what in self.fixed]
        lines += [f"could not fix {what}" for what in self.fix_errors]
        lines += [f.line() for f in self.findings]
        failing = sum(1 for f in self.findings if not f.passed)
        if failing:
            lines.append(f"{failing} of {len(self.findings)} checks fail")
        else:
            lines.append(f"all {len(self.findings)} checks pass")
        return lines


def examine(checks: list[Check], apply_fixes: bool) -> Report:
    report = Report([])
    if apply_fixes:
        for check in checks:
            for finding in list(check()):
                if finding.passed or finding.fix is None:
                    continue
                try:
                    finding.fix()
                except (BureauError, OSError) as exc:
                    report.fix_errors.append(f"{finding.name}: {exc}")
                else:
                    report.fixed.append(finding.name)
    for check in checks:
        report.findings.extend(check())
    return report
