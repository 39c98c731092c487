"""bureau-proxy: one principal's credential-injecting HTTP proxy.

Not yet part of this release: it arrives with the credential-delivery work. The entry
point exists so that packages and units can name it; it refuses to run rather than
pretend to."""

from __future__ import annotations

from bureau.edge import run
from bureau.errors import BureauError


def _main() -> int:
    raise BureauError("the proxy is not part of this release yet (credential delivery)")


def main() -> None:
    run("bureau-proxy", _main)
