"""The daemon's side of running principals: one reconcile pass asks the launcher, action
by action, to make what runs match what is wanted (daemon/reconcile.py decides). Each
principal stands alone: a refusal or a launcher that did not answer is that principal's
failure, retried on its own backoff, and shown in machine_status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bureau.daemon.launcher_client import LauncherClient, LauncherRefused, LauncherUnavailable
from bureau.daemon.reconcile import Ensure, Failure, failed, is_due, plan
from bureau.machine_config import MachineConfig


class Principals:
    def __init__(self, launcher: LauncherClient, log: Any, rng: Callable[[], float]) -> None:
        self._launcher = launcher
        self._log = log
        self._rng = rng
        self.failures: dict[str, Failure] = {}  # principal -> its last action's failure
        self.running = 0

    def next_retry(self) -> float | None:
        """When the earliest failed principal is due again (monotonic), if any."""
        return min((f.retry_at for f in self.failures.values()), default=None)

    async def reconcile(
        self, config: MachineConfig, credentials: dict[str, dict[str, Any]]
    ) -> bool:
        """One pass; True when what the heartbeat reports changed. A launcher that cannot
        even list raises LauncherUnavailable, and the whole pass is tried again."""
        changed = False
        listed = await self._launcher.list()
        running = {str(p["principal"]): str(p["digest"]) for p in listed}
        actions = plan(config, credentials, running)
        pending = {action.principal for action in actions}
        for principal in [p for p in self.failures if p not in pending]:
            del self.failures[principal]  # done elsewhere, or no longer wanted
            changed = True
        for action in actions:
            previous = self.failures.get(action.principal)
            if not is_due(previous, action, time.monotonic()):
                continue
            starting = isinstance(action, Ensure)
            try:
                if isinstance(action, Ensure):
                    await self._launcher.ensure(action.principal, action.content)
                else:
                    await self._launcher.stop(action.principal)
            except (LauncherRefused, LauncherUnavailable) as exc:
                refused = isinstance(exc, LauncherRefused)
                now = time.monotonic()
                failure = failed(
                    previous, action, str(exc), refused=refused, now=now, rng=self._rng
                )
                self.failures[action.principal] = failure
                self._log.warning(
                    "could not start a principal" if starting else "could not stop a principal",
                    principal=action.principal,
                    refused=refused,
                    error=failure.reason,
                    retry_in=round(failure.retry_at - now, 1),
                )
                changed = changed or previous is None or previous.reason != failure.reason
                continue
            self.failures.pop(action.principal, None)
            self._log.info(
                "principal running" if starting else "principal stopped",
                principal=action.principal,
            )
            changed = True
        self.running = sum(1 for p in await self._launcher.list() if p.get("status") == "running")
        return changed
