"""Where a bureau-proxy leg's time goes: the leg driven at c=16 as the benchmark drives it,
the proxy sampled meanwhile, and its CPU split into user and system time from /proc. For
a target the benchmark misses, so that the report can say what a profile shows.

Two samplers: py-spy (the default) sees Python functions (and, with --native, C frames),
by wall time while the proxy is not idle; `perf` (--perf, software clock) sees CPU time
where it is spent, kernel included, by shared object and C symbol (the interpreter's
own, hashing, memchr, the kernel's socket calls), with no Python names.

usage: python bench/profile_proxy.py LOADGEN [--leg LEG] [--seconds S] [--native | --perf]
           [--py-spy PATH] [--top N] [--raw FILE]
LEG: header (GET, small), post (the header kind, 256 B POST), sigv4, s3, oauth2,
cleaned or binary (1 MiB response). py-spy: `pip install py-spy`; perf: Debian's
linux-perf (neither is a dependency).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "support")]

import kind_legs  # noqa: E402
from proxy_overhead import CLOCK_TICKS, drive  # noqa: E402
from servers import Case, upstream  # noqa: E402

LEGS = {  # leg -> (service, method, path under the service, request body bytes)
    "header": ("api", "GET", "/small", None),
    "post": ("api", "POST", "/small", kind_legs.REQUEST_BYTES),
    "sigv4": ("sigv4", "POST", "/small", kind_legs.REQUEST_BYTES),
    "s3": ("s3", "PUT", "/small", kind_legs.REQUEST_BYTES),
    "oauth2": ("oauth", "GET", "/small", None),
    "cleaned": ("api", "GET", "/text/1MiB", None),
    "binary": ("api", "GET", "/binary/1MiB", None),
}


def user_system(pid: int) -> tuple[float, float]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive shares of the samples, by frame (function and file)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples (not idle)", "", "self:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def perf_report(data: str, top: int) -> str:
    """CPU samples by shared object, then by symbol, self time (no children)."""
    out = []
    for sort in ("dso", "dso,sym"):
        report = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                data,
                "--stdio",
                "--no-children",
                "--sort",
                sort,
                "-g",
                "none",
                "--percent-limit",
                "0.3",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
        out += [f"by {sort}:", *rows[:top], ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="profile one bureau-proxy leg under load")
    parser.add_argument("loadgen", type=Path)
    parser.add_argument("--leg", choices=sorted(LEGS), default="header")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("--perf", action="store_true", help="sample with perf, not py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    service, method, path, request_bytes = LEGS[args.leg]
    work = Path(tempfile.mkdtemp(prefix="bureau-profile-", dir="/tmp"))
    work.chmod(0o755)
    raw = args.raw or work / "stacks.txt"
    data = str(work / "perf.data")
    try:
        with (
            upstream(work / "upstream") as (_, port),
            kind_legs.legs(work, port) as kinds,
        ):
            server = kinds.server
            headers = ("Content-Type: application/json",) if request_bytes else ()
            case = Case(
                args.leg,
                server,
                f"/http/{service}{path}",
                "",
                16,
                True,
                method,
                request_bytes,
                headers,
            )
            reason = kinds.unavailable(case)
            if reason:
                sys.exit(f"profile: {args.leg}: {reason}")
            drive(args.loadgen, case, 1.0)  # warm up: connections, a token to mint
            pid = str(server.proc.pid)
            if args.perf:
                spy = [
                    "perf",
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-F",
                    "2000",
                    "-g",
                    "-p",
                    pid,
                    "-o",
                    data,
                    "--",
                    "sleep",
                    str(args.seconds),
                ]
            else:
                where = ["--pid", pid, "--output", str(raw)]
                how = ["--rate", "500", "--format", "raw", "--nolineno"]
                # Unwinding C frames needs the process paused for each sample.
                how += ["--native"] if args.native else ["--nonblocking"]
                spy = [args.py_spy, "record", *where, *how, "--duration", str(int(args.seconds))]
            before = user_system(server.proc.pid)
            result: dict[str, dict[str, float]] = {}
            load = threading.Thread(
                target=lambda: result.setdefault("load", drive(args.loadgen, case, args.seconds))
            )
            load.start()
            spied = subprocess.run(spy, capture_output=True, text=True, check=False)
            load.join()
            if spied.returncode != 0:
                sys.exit(f"profile: {spy[0]} failed: {spied.stderr.strip()[-1000:]}")
            after = user_system(server.proc.pid)
        profile = perf_report(data, args.top) if args.perf else summarize(raw, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    requests = result["load"]["requests"]
    user, system = (b - a for a, b in zip(before, after, strict=True))
    print(profile)
    print(
        f"\n{args.leg}: {requests / args.seconds:,.0f} req/s at c=16; proxy CPU "
        f"{(user + system) / requests * 1e6:.1f} us/request: user "
        f"{user / requests * 1e6:.1f}, system {system / requests * 1e6:.1f} "
        "(the sampler's cost included)"
    )


if __name__ == "__main__":
    main()
