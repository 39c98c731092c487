"""The fleet binary cache settings the doctor and script tests set and check."""

from __future__ import annotations

from hub_fleet import Fleet
from processes import run

CACHE_KEY = "bureau:" + "A" * 43 + "="


CACHE_URL = "http://attic.internal:5580/bureau"


def set_cache(fleet: Fleet, public_key: str):  # type: ignore[no-untyped-def]
    return run(
        "bureau",
        "fleet",
        "cache",
        "set",
        "--credential-file",
        fleet.credential_file,
        "--url",
        CACHE_URL,
        "--name",
        "bureau",
        "--public-key",
        public_key,
    )
