"""Run every benchmark side by side and write bench/results/latest.{md,json,png}.

usage: python bench/run.py LOADGEN [--rounds N] [--seconds S]   (./script/bench runs it)
       python bench/run.py LOADGEN --scale [--sizes 20,50] [--databases sqlite]   (the
       scale run alone, bench/scale.py: writes bench/results/scale.{json,md,png})
       python bench/run.py LOADGEN --proxy-only [--json PATH]   (the proxy legs alone,
       their tables printed; bench/results left as they are)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# bench/ is a directory of scripts, not a package, and it stands on the tests' harness
# (tests/support: plain modules, no pytest). The one place either is put on the path.
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "support")]

import fleet  # noqa: E402
import proxy_overhead  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
import scale_report  # noqa: E402
from hub_fleet import quiet_structlog  # noqa: E402


def code() -> dict[str, Any]:
    """What is measured: the commit, the files of bureau/ that differ from it (a checkout
    others may be editing) and a digest of what those hold."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=False
        )
        return done.stdout if done.returncode == 0 else ""

    modified = [line[3:] for line in git("status", "--porcelain", "--", "bureau").splitlines()]
    digest = hashlib.sha256()
    for name in modified:
        path = HERE.parent / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            digest.update(name.encode() + b"\0")
            with contextlib.suppress(OSError):  # deleted, or a directory
                digest.update(file.read_bytes())
    return {"commit": git("rev-parse", "HEAD").strip(), "modified": modified,
            "digest": digest.hexdigest()}  # fmt: skip


def proxy_results(proxy: proxy_overhead.Run) -> dict[str, Any]:
    return {
        "proxy_overhead": proxy_overhead.summarize(proxy.samples),
        "proxy_unavailable": proxy.unavailable,
        "proxy_notes": proxy.notes,
        "proxy_overhead_samples": proxy_overhead.as_json(proxy.samples),
    }


def proxy_only(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bureau-bench-", dir="/tmp"))
    work.chmod(0o755)  # nginx's workers (nobody, when started as root) read files in it
    measured = code()
    try:
        started = time.monotonic()
        proxy = proxy_overhead.run(args.loadgen, work / "overhead", args.rounds, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "code": {**measured, "changed_during_run": code() != measured},
        "rounds": args.rounds,
        "seconds": args.seconds,
        **proxy_results(proxy),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(report.proxy_markdown(results))
    failed = [r for r in results["proxy_overhead"] if r["errors"]]
    if failed:
        sys.exit(f"bench: {len(failed)} cases had failed requests; the numbers are not valid")


def scale_only(args: argparse.Namespace) -> None:
    """The scale run (bench/scale.py) alone, its results in scale.{json,md,png}."""
    sizes = [int(n) for n in args.sizes.split(",") if n]
    databases = [d for d in args.databases.split(",") if d]
    for database in databases:
        if database not in scale.DATABASES:
            sys.exit(f"bench: --databases: {database!r} is not one of {', '.join(scale.DATABASES)}")
    if not sizes or sorted(sizes) != sizes or sizes[0] < 1:
        sys.exit("bench: --sizes: expected increasing machine counts, e.g. 20,50,100,200")
    quiet_structlog()
    measured = code()
    started = time.monotonic()
    print(f"scale: {sizes} machines on {databases}", flush=True)
    results = scale.run(databases, sizes, args.processes, args.scale_idle, args.scale_rounds)
    publishers = {r.get("publisher") for run in results["runs"] for r in run["rotations"]}
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "code": {**measured, "changed_during_run": code() != measured},
        "idle_seconds": args.scale_idle,
        "fleet_publisher": ", ".join(sorted(p for p in publishers if p)),
        **results,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "scale.md").write_text(scale_report.markdown(results))
    scale_report.plot(results, args.out / "scale.png")
    print((args.out / "scale.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description="bureau's benchmarks")
    parser.add_argument("loadgen", type=Path, help="the compiled bench/loadgen.c")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per case (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per case (default 3)")
    parser.add_argument("--boots", type=int, default=10, help="first boots to time (default 10)")
    parser.add_argument("--rotations", type=int, default=20, help="rotations (default 20)")
    parser.add_argument("--workers", type=int, default=20, help="simulated workers (default 20)")
    parser.add_argument(
        "--starts", type=int, default=20, help="principal starts timed per leg (default 20)"
    )
    parser.add_argument(
        "--idle", type=float, default=60.0, help="seconds of daemon idle CPU (default 60)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument(
        "--proxy-only",
        action="store_true",
        help="only the proxy legs: print their targets and tables, write no results",
    )
    parser.add_argument("--json", type=Path, help="with --proxy-only: write the results here")
    parser.add_argument("--scale", action="store_true", help="only the scale run (bench/scale.py)")
    parser.add_argument(
        "--sizes", default="20,50,100,200", help="with --scale: machine counts (20,50,100,200)"
    )
    parser.add_argument(
        "--databases",
        default="sqlite,postgresql",
        help="with --scale: the hub's databases (sqlite,postgresql)",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="with --scale: simulator processes (2)"
    )
    parser.add_argument(
        "--scale-idle", type=float, default=30.0, help="with --scale: idle window seconds (30)"
    )
    parser.add_argument(
        "--scale-rounds", type=int, default=1, help="with --scale: rotations of each kind (1)"
    )
    args = parser.parse_args()
    if args.proxy_only:
        proxy_only(args)
        return
    if args.scale:
        scale_only(args)
        return
    quiet_structlog()  # the fleet's setup and publishing run in this process
    work = Path(tempfile.mkdtemp(prefix="bureau-bench-", dir="/tmp"))
    work.chmod(0o755)  # nginx's workers (nobody, when started as root) read files in it
    measured = code()
    try:
        started = time.monotonic()
        print(f"proxy overhead: {args.rounds} rounds x {args.seconds} s per case", flush=True)
        proxy = proxy_overhead.run(args.loadgen, work / "overhead", args.rounds, args.seconds)
        print(
            f"fleet: {args.boots} first boots, {args.rotations} rotations, memory, "
            f"{args.starts} starts with and without a sandbox, sandbox memory, "
            f"{args.workers} simulated workers",
            flush=True,
        )
        fleet_results = fleet.run(
            work / "fleet", args.boots, args.rotations, args.workers, args.idle, args.starts
        )
        mem = fleet_results.pop("memory")
        results = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "code": {**measured, "changed_during_run": code() != measured},
            "rounds": args.rounds,
            "seconds": args.seconds,
            **proxy_results(proxy),
            "memory": mem,
            "fleet": fleet_results,
            "wall_seconds": round(time.monotonic() - started, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "latest.md").write_text(report.markdown(results))
    report.plot(results, args.out / "latest.png")
    print((args.out / "latest.md").read_text())
    failed = [r for r in results["proxy_overhead"] if r["errors"]]
    if failed:
        sys.exit(f"bench: {len(failed)} cases had failed requests; the numbers are not valid")


if __name__ == "__main__":
    main()
