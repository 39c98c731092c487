"""Real machines for the scale run, enrolled fast: the operator's provisioning
(bureau.operator.machines.provision, what `bureau machine provision` runs) and the
launcher's first boot (bureau.launcher.first_boot.boot_with_bootstrap, what
`bureau-launcher --first-boot-only` runs), called in this process from a few threads
instead of two processes per machine. Each machine gets its own account, one-time
password rotated to its key-derived password, age key (plain storage), published
m.bureau.machine_key, config room and rooms joined, as a first boot leaves them."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from bureau import key_store
from bureau.files import atomic_write
from bureau.launcher.first_boot import KeyOptions, boot_with_bootstrap
from bureau.operator import machines
from bureau.wire import names
from bureau.wire.files import OperatorCredentials

# Synapse hashes at its default cost (bcrypt 12) for each registration, login and password
# change; four threads keep both CPUs busy without queueing the hub deeply.
THREADS = 4


@dataclass(frozen=True)
class SimMachine:
    """An enrolled machine: what its simulated daemon and launcher read."""

    index: int
    short_name: str  # machine/simN
    localpart: str
    state_dir: Path

    def user_id(self, server: str) -> str:
        return names.user_id(self.localpart, server)

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "short_name": self.short_name,
                "localpart": self.localpart, "state_dir": str(self.state_dir)}  # fmt: skip


def enroll_one(creds: OperatorCredentials, work: Path, index: int) -> SimMachine:
    short = f"machine/sim{index}"
    localpart = f"{creds.fleet}/{short}"
    directory = work / f"sim{index}"
    directory.mkdir(parents=True, exist_ok=True)
    config = machines.provision(creds, localpart)
    bootstrap = directory / "bootstrap.json"
    atomic_write(bootstrap, json.dumps(config.to_json()).encode(), 0o600)
    state_dir = directory / "state"
    state_dir.mkdir(mode=0o700, exist_ok=True)  # the launcher's main makes it so
    keys = KeyOptions(state_dir, key_store.KeyStorage.PLAIN, None)
    log = structlog.get_logger("scale-enroll")
    boot_with_bootstrap(bootstrap_file=bootstrap, machine_name=short, keys=keys, log=log)
    return SimMachine(index, short, localpart, state_dir)


def enroll(
    creds: OperatorCredentials, work: Path, first: int, count: int
) -> tuple[list[SimMachine], float]:
    """Machines sim<first> .. sim<first+count-1>, and the seconds it took."""
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        done = list(pool.map(lambda i: enroll_one(creds, work, i), range(first, first + count)))
    return done, time.monotonic() - started
