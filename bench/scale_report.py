"""bench/results/scale.md (targets with their ratios, the table per size and database,
where the time goes) and scale.png (time to serve against machines), from a scale run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

TARGET_SERVE_S = 3.0
TARGET_NEW_MACHINE_S = 10.0
TARGET_MACHINES = 200
KINDS = {"per_machine": "one event per machine", "fleet": "one fleet bundle"}


def _rotations(run: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in run["rotations"] if r["kind"] == kind]


def _median(run: dict[str, Any], kind: str, key: str) -> float:
    return float(statistics.median(r[key] for r in _rotations(run, kind)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def targets(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for run in results["runs"]:
        if run["machines"] != TARGET_MACHINES:
            continue
        served = max(r["all_served_s"] for r in _rotations(run, "fleet"))
        rows.append([
            f"{TARGET_MACHINES} machines serve a rotated fleet credential within "
            f"{TARGET_SERVE_S:g} s of the publish ({run['database']})",
            f"{served:.2f} s ({served / TARGET_SERVE_S:.2f}x the target)",
            "met" if served <= TARGET_SERVE_S else "**not met**",
        ])  # fmt: skip
    for run in results["runs"]:
        new = run.get("new_machine")
        if not new:
            continue
        took = float(new["seconds"])
        rows.append([
            f"a new machine gets the fleet's credentials within {TARGET_NEW_MACHINE_S:g} s "
            f"of its first boot, reseal --watch running ({run['database']}, "
            f"{new['machines_before']} machines)",
            f"{took:.2f} s ({took / TARGET_NEW_MACHINE_S:.2f}x the target): first boot "
            f"{new['first_boot_s']:.2f} s, then {new['after_boot_s']:.2f} s to its decrypt",
            "met" if took <= TARGET_NEW_MACHINE_S else "**not met**",
        ])  # fmt: skip
    if not any(run.get("new_machine") for run in results["runs"]):
        target = f"a new machine gets the fleet's credentials within {TARGET_NEW_MACHINE_S:g} s"
        rows.append([f"{target} of its first boot", "not measured", ""])
    return rows


def _size_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for run in results["runs"]:
        idle = run["idle"]
        for kind, label in KINDS.items():
            if not _rotations(run, kind):
                continue
            last = max(_rotations(run, kind), key=lambda r: r["all_served_s"])
            hub = " + ".join(f"{v:.1f}" for v in last["hub_cpu_s"].values())
            rss = " + ".join(f"{v:.0f}" for v in last["hub_peak_rss_mib"].values())
            rows.append([
                run["database"], str(run["machines"]), label,
                f"{_median(run, kind, 'publish_s'):.2f}",
                f"{_median(run, kind, 'all_served_s'):.2f}",
                f"{_median(run, kind, 'median_served_s'):.2f}",
                f"{hub} ({last['hub_cpu_share']:.2f})",
                f"{last['simulators_cpu_s']:.1f}",
                rss,
                f"{idle['machine_cpu_s_per_min'] * 1000:.1f} / "
                f"{idle['hub_cpu_s_per_machine_min'] * 1000:.1f}",
            ])  # fmt: skip
    return rows


def _counts(counts: dict[str, float] | None) -> str:
    if not counts or not counts.get("state_reads"):
        return ""
    per_read = counts["state_events"] / counts["state_reads"]
    return f"{counts['syncs']:.1f} / {counts['state_reads']:.1f} ({per_read:.0f} events)"


def _where_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for run in results["runs"]:
        for kind, label in KINDS.items():
            rotations = _rotations(run, kind)
            if not rotations:
                continue
            slowest = max(rotations, key=lambda r: r["all_served_s"])
            where, last = slowest["where"], slowest["where"]["slowest"]
            rows.append([
                run["database"], str(run["machines"]), label,
                f"{slowest['publish_s'] * 1000:.0f}",
                f"{where['sync_arrived_s']['median'] * 1000:.0f} / "
                f"{where['sync_arrived_s']['max'] * 1000:.0f}",
                f"{where['state_read_s']['median'] * 1000:.0f} / "
                f"{where['state_read_s']['max'] * 1000:.0f}",
                f"{where['decrypt_s']['median'] * 1000:.1f} / "
                f"{where['decrypt_s']['max'] * 1000:.1f}",
                f"{last['sync_arrived_s'] * 1000:.0f} + {last['state_read_s'] * 1000:.0f} + "
                f"{last['plan_s'] * 1000:.1f} + {last['open_s'] * 1000:.1f}",
                _counts(slowest.get("per_machine_counts")),
            ])  # fmt: skip
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# bureau scale run",
        "",
        f"{results['when']}, {results['cpus']} CPUs shared by the hub, the simulators and "
        "this script (and by other engineers' test runs on the same machine); "
        f"{results['processes']} simulator processes; {results['rounds']} rotation(s) of each "
        f"kind per size; fleet bundles published by {results.get('fleet_publisher', '?')}; "
        f"idle windows of {results['idle_seconds']:g} s scaled to a minute.",
        "",
        "## Targets",
        "",
        *_table(["target", "measured", ""], targets(results)),
        "",
        "## Per size and database",
        "",
        "Times in seconds from the start of the publish. *served*: the last machine (and the "
        "median machine) has opened the new value. Hub CPU: CPU seconds of Synapse (+ "
        "PostgreSQL) from the publish's start until the last machine served (in parentheses, "
        "as CPUs busy over that time); peak RSS in MiB (PostgreSQL's is the sum over its "
        "processes, shared buffers counted in each). Idle: CPU milliseconds per machine per "
        "minute in the simulators / in the hub, with nothing published.",
        "",
        *_table(
            [
                "database",
                "machines",
                "rotation",
                "publish s",
                "all served s",
                "median s",
                "hub CPU s",
                "simulators CPU s",
                "hub peak RSS MiB",
                "idle ms/machine/min",
            ],
            _size_rows(results),
        ),
        "",
        "## Where the time goes (slowest rotation of each kind)",
        "",
        "Milliseconds, median / max over the machines: the sync returning with the change "
        "(from the publish's start), reading the rooms' state back, the launcher's signature "
        "check and decrypt; and for the last machine to serve: sync + state read + plan + "
        "open (open includes waiting behind other machines of its simulator process); and per "
        "machine, the syncs that returned and the room state reads (with the events each "
        "carried) from the publish until the fleet was quiet again.",
        "",
        *_table(
            [
                "database",
                "machines",
                "rotation",
                "publish ms",
                "sync arrived",
                "state read",
                "decrypt",
                "last machine",
                "syncs / state reads per machine",
            ],
            _where_rows(results),
        ),
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 -- only `./script/bench` installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for database in sorted({r["database"] for r in results["runs"]}):
        runs = [r for r in results["runs"] if r["database"] == database]
        for kind, label in KINDS.items():
            points = [(r["machines"], _median(r, kind, "all_served_s")) for r in runs
                      if _rotations(r, kind)]  # fmt: skip
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-" if kind == "fleet" else "--"
                marker = "o" if database == "sqlite" else "s"
                ax.plot(xs, ys, style, marker=marker, label=f"{label}, {database}")
    ax.axhline(TARGET_SERVE_S, color="grey", linewidth=0.8, linestyle=":")
    ax.annotate(f"target: {TARGET_SERVE_S:g} s (fleet bundle, {TARGET_MACHINES} machines)",
                (0.01, TARGET_SERVE_S), xycoords=("axes fraction", "data"),
                textcoords="offset points", xytext=(2, 3), fontsize=8, color="grey")  # fmt: skip
    ax.set_xlabel("simulated machines")
    ax.set_ylabel("seconds from publish to the last machine serving")
    ax.set_title(f"Rotation: time to serve vs machines ({results['cpus']} CPUs, hub included)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
