"""bureau.passwords: upstream's derivations, byte for byte (vectors computed independently
with coreutils `printf %s ... | sha256sum`), and the one-time password's shape."""

from __future__ import annotations

from bureau import passwords
from bureau.secret import Secret

WORKER = "bureau/fleet/prod/machine/worker-01"


def test_password_derivations_match_vectors() -> None:
    token = Secret("tok-123")
    assert passwords.admin_password(token).reveal() == (
        "8eba6698a23d8394f4eee6c3833844b06afbd640ee3b1a02d15d7486cc379c2e"
    )
    assert (
        passwords.machine_permanent_password(WORKER, Secret("AGE-SECRET-KEY-1EXAMPLE")).reveal()
        == "ddf273e846cdf514e72ae75c0c8ea44057789ba6d3ed4aeb1a00870ff6c319e4"
    )
    assert passwords.machine_legacy_password(WORKER, token).reveal() == (
        "d2bae26037b49fe86f3de6130f174470f95a02c85e8d7ddd95120e5889d8d1ae"
    )


def test_one_time_password_shape() -> None:
    a, b = passwords.one_time_password().reveal(), passwords.one_time_password().reveal()
    assert a != b
    assert len(a) == 64
    assert set(a) <= set("0123456789abcdef")
