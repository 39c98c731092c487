"""How long a machine takes to decrypt a fleet bundle as its recipients grow (#20 part 1):
pyrage's streaming ``decrypt_io`` (what bureau.age_keys.decrypt uses) against the
one-shot ``decrypt``, with the machine's stanza first and last in the header (age tries
each stanza in turn: the last recipient pays one X25519 per stanza before it).

    .venv/bin/python bench/fleet_decrypt.py [--repeat N] [--json]

Each figure is the median of N decrypts (wall clock, one thread) of a bundle of a few
hundred bytes of plaintext, as a fleet bundle's is. Nothing here runs in the test suite."""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

import pyrage
from pyrage import x25519

SIZES = (1, 50, 64, 200, 500)  # 64: the operator side's shard cap (MAX_RECIPIENTS)
PLAINTEXT = b'{"FLEET_TOKEN":"' + b"x" * 200 + b'","bureau.binding":"sha256:' + b"0" * 64 + b'"}'


def _median_ms(call: Callable[[], bytes], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
        assert out == PLAINTEXT
    return statistics.median(times) * 1000


def _streaming(ciphertext: bytes, identity: x25519.Identity) -> bytes:
    out = io.BytesIO()
    pyrage.decrypt_io(io.BytesIO(ciphertext), out, [identity])
    return out.getvalue()


def _one_shot(ciphertext: bytes, identity: x25519.Identity) -> bytes:
    return bytes(pyrage.decrypt(ciphertext, [identity]))


def measure(recipients: int, repeat: int) -> dict[str, float | int]:
    identities = [x25519.Identity.generate() for _ in range(recipients)]
    ciphertext = pyrage.encrypt(PLAINTEXT, [i.to_public() for i in identities])
    row: dict[str, float | int] = {"recipients": recipients, "bytes": len(ciphertext)}
    for where, identity in (("first", identities[0]), ("last", identities[-1])):
        row[f"decrypt_io_{where}_ms"] = _median_ms(
            partial(_streaming, ciphertext, identity), repeat
        )
        row[f"decrypt_{where}_ms"] = _median_ms(partial(_one_shot, ciphertext, identity), repeat)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="one JSON object per size")
    args = parser.parse_args()
    rows = [measure(n, args.repeat) for n in SIZES]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(
        "| recipients | bundle bytes | decrypt_io, first | decrypt_io, last "
        "| decrypt, first | decrypt, last |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['recipients']} | {row['bytes']} | {row['decrypt_io_first_ms']:.2f} ms "
            f"| {row['decrypt_io_last_ms']:.2f} ms | {row['decrypt_first_ms']:.2f} ms "
            f"| {row['decrypt_last_ms']:.2f} ms |"
        )


if __name__ == "__main__":
    main()
