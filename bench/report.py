"""bench/results/latest.md (tables, targets with the measured ratios) and latest.png (the
same numbers as a plot), from one run's results."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import report_proxy

Row = dict[str, Any]
_row = report_proxy.row


def proxy_part(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": results["proxy_overhead"],
        "unavailable": results.get("proxy_unavailable", {}),
        "notes": results.get("proxy_notes", {}),
    }


def targets(results: dict[str, Any]) -> list[report_proxy.Target]:
    """(target, measured, met) for every target this run measures."""
    memory: dict[str, Any] = results["memory"]
    fleet: dict[str, Any] = results["fleet"]
    per_principal = memory["pss_per_additional_principal_mib"]
    return [
        *report_proxy.targets(proxy_part(results)),
        (
            "<= 15 MiB PSS per additional principal",
            f"{per_principal:.1f} MiB",
            per_principal <= 15,
        ),
        (
            "rotation <= sync floor + 100 ms",
            f"{fleet['rotation_s'] * 1000:.0f} ms vs floor {fleet['sync_floor_s'] * 1000:.0f} ms",
            fleet["rotation_s"] <= fleet["sync_floor_s"] + 0.1,
        ),
        (
            "0 failed requests during rotations",
            f"{fleet['rotation_failures']} of {fleet['rotation_requests']}",
            fleet["rotation_failures"] == 0,
        ),
        (
            f"simulated fleet: 0 failed requests through a rotation of all "
            f"{fleet['simulated_fleet']['workers']} workers",
            f"{fleet['simulated_fleet']['failures']} of {fleet['simulated_fleet']['requests']}",
            fleet["simulated_fleet"]["failures"] == 0,
        ),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _code(code: dict[str, Any] | None) -> str:
    if not code:
        return ""
    text = f" Code: {code['commit'][:10]}"
    if code["modified"]:
        text += f" with uncommitted changes to {', '.join(code['modified'])}"
    if code["changed_during_run"]:
        text += " (**changed during the run**)"
    return text + "."


def _sandboxes(sandboxes: dict[str, Any]) -> list[str]:
    start, mem = sandboxes["start"], sandboxes["memory"]
    proxy, boxed = start["proxy_only"], start["sandboxed"]

    def ms(stats: dict[str, float]) -> list[str]:
        return [f"{stats['median_ms']:.0f} ms", f"{stats['p90_ms']:.0f} ms"]

    kinds = mem["kinds"]
    counts = [str(r["principals"]) for r in mem["rows"]]

    def mib_row(name: str, kind: dict[str, Any]) -> list[str]:
        return [
            name,
            *[f"{kind['pss_each_mib'][c]:.2f}" for c in counts],
            f"{kind['pss_per_additional_mib']:.2f}",
            f"{kind['rss_each_mib'][counts[-1]]:.1f}",
        ]

    ours = [k for k in ("keeper", "bwrap outer", "bwrap inner", "log relay", "proxy")
            if kinds.get(k, {}).get("processes_each")]  # fmt: skip
    total = {
        "pss_each_mib": {c: sum(kinds[k]["pss_each_mib"][c] for k in ours) for c in counts},
        "rss_each_mib": {c: sum(kinds[k]["rss_each_mib"][c] for k in ours) for c in counts},
        "pss_per_additional_mib": mem["pss_per_additional_principal_mib"],
    }
    steps = boxed["steps_ms"]
    launcher_pss = mem["launcher_and_template_pss_mib"]
    return [
        "## Sandboxed principals (embedded hub, one worker)",
        "",
        f"From an assignment published (the PUT of the machine's config answered) to the "
        f"principal running, {start['starts']} starts per leg, legs interleaved, each start "
        "undone (and the machine quiet for half a second) before the next; a real launcher "
        "and daemon. Running is seen by one loop "
        "polling every millisecond: the proxy's socket in place and a request through it "
        "answered, and for a sandbox the marker its workload "
        "(`sh -c ': > /workspace/running; exec sleep infinity'` on agent-base) writes first.",
        "",
        *_table(
            ["assignment", "running means", "median", "p90"],
            [
                ["without a template (proxy only)", "proxy serving", *ms(proxy["running"])],
                ["with a template (sandboxed)", "workload's marker written", *ms(boxed["running"])],
                ["with a template (sandboxed)", "its proxy serving", *ms(boxed["proxy_serving"])],
                [
                    "ratio, sandboxed workload to proxy only",
                    "",
                    f"{start['ratio_median']:.2f}x",
                    f"{start['ratio_p90']:.2f}x",
                ],
            ],
        ),
        "",
        "Steps of a sandboxed start (medians; the launcher's log): published to "
        f'"proxy started" {steps["published to proxy started (logged)"]:.0f} ms, then to the '
        f"workload's marker {steps['proxy started to workload' + chr(39) + 's marker']:.0f} ms. "
        "The launcher alone (its own answer on its socket, no daemon, median of "
        f"{mem['ensures']}): a proxy {mem['ensure_proxy']['median_ms']:.0f} ms, then the "
        f"sandbox beside it {mem['ensure_sandbox']['median_ms']:.0f} ms. bubblewrap alone "
        "(the command line the launcher ran for a sandbox, keeper and prlimit included, with "
        "no launcher handshake, as a sandbox uid, the same workload; median of "
        f"{mem['bare_bwrap_runs']}): "
        f"{mem['bare_bwrap']['median_ms']:.0f} ms to the marker.",
        "",
        f"Memory of the processes a sandbox adds beyond its workload (`/bin/sleep`), with "
        f"{' and '.join(counts)} sandboxed principals on one launcher; PSS in MiB per "
        "principal, and per additional principal from the first count to the last.",
        "",
        *_table(
            [
                "process",
                *[f"PSS each, {c}" for c in counts],
                "PSS per additional",
                f"RSS each, {counts[-1]}",
            ],
            [
                *[mib_row(k, kinds[k]) for k in ours],
                mib_row("**total**", total),
                mib_row("workload, not counted", kinds["workload"]),
            ],
        ),
        "",
        "The launcher and its proxy template together: "
        + ", ".join(f"{launcher_pss[c]:.1f} MiB PSS with {c}" for c in counts)
        + " (their shared pages split among more processes).",
        "",
    ]


def markdown(results: dict[str, Any]) -> str:
    memory: dict[str, Any] = results["memory"]
    sim: dict[str, Any] = results["fleet"]["simulated_fleet"]
    fleet: dict[str, Any] = results["fleet"]
    lines = [
        "# Benchmarks: latest run",
        "",
        f"{results['when']} on {platform.machine()}, {results['cpus']} CPUs; "
        f"medians of {results['rounds']} rounds of {results['seconds']} s per case, legs "
        "interleaved in each round. Reproduce with `./script/bench`." + _code(results.get("code")),
        "",
        "## Targets",
        "",
        *_table(
            ["target", "measured", "met"],
            [
                [t, m, "n/a" if ok is None else "yes" if ok else "**no**"]
                for t, m, ok in targets(results)
            ],
        ),
        "",
        *report_proxy.sections(proxy_part(results)),
        "## Memory per principal",
        "",
        "A real launcher and everything it runs (the proxy template, one proxy per principal),"
        " principals started with the daemon's ensure request.",
        "",
        *_table(
            ["principals", "processes", "PSS MiB", "RSS MiB"],
            [
                [
                    str(r["principals"]),
                    str(r["processes"]),
                    f"{r['pss_mib']:.1f}",
                    f"{r['rss_mib']:.1f}",
                ]
                for r in memory["rows"]
            ],
        ),
        "",
        f"Per additional principal: {memory['pss_per_additional_principal_mib']:.1f} MiB PSS. "
        f"For scale, the idle nginx upstream (master and worker): {memory['nginx_pss_mib']:.1f} "
        "MiB PSS.",
        "",
        "## Enrollment, start-up and rotation (embedded hub, one worker)",
        "",
        *_table(
            ["measure", "median"],
            [
                [
                    f"first boot, bootstrap.json to session.json ({fleet['first_boots']} machines)",
                    f"{fleet['first_boot_s'] * 1000:.0f} ms, "
                    f"{fleet['first_boot_matrix_share'] * 100:.0f}% waiting on Synapse",
                ],
                ["launcher start to READY", f"{fleet['launcher_ready_s'] * 1000:.0f} ms"],
                [
                    "daemon start to READY (first sync reconciled)",
                    f"{fleet['daemon_ready_s'] * 1000:.0f} ms",
                ],
                [
                    f"rotation: provision returned to new value proxied ({fleet['rotations']})",
                    f"{fleet['rotation_s'] * 1000:.0f} ms",
                ],
                [
                    "sync floor: state PUT returned to another client's /sync",
                    f"{fleet['sync_floor_s'] * 1000:.0f} ms",
                ],
            ],
        ),
        "",
        *_sandboxes(fleet["sandboxes"]),
        f"## A simulated fleet ({sim['workers']} workers, one hub, this machine)",
        "",
        "Each worker is a real launcher and daemon with its own state and run directories; "
        "each worker's principal sends a request through its proxy every "
        f"{sim['pace_s'] * 1000:.0f} ms.",
        "",
        *_table(
            ["measure", "value"],
            [
                [
                    f"publish a new value for all {sim['workers']} principals (one event each)",
                    f"{sim['publish_s'] * 1000:.0f} ms",
                ],
                [
                    "first publish to the last proxy serving the new value",
                    f"{sim['all_served_s'] * 1000:.0f} ms "
                    f"(median worker {sim['median_served_s'] * 1000:.0f} ms)",
                ],
                ["requests failed meanwhile", f"{sim['failures']} of {sim['requests']}"],
                [
                    f"daemon idle CPU over {sim['idle_seconds']:.0f} s (median, max)",
                    f"{sim['daemon_idle_cpu_median'] * 100:.2f}%, "
                    f"{sim['daemon_idle_cpu_max'] * 100:.2f}% of one CPU",
                ],
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def proxy_markdown(results: dict[str, Any]) -> str:
    """The proxy legs alone (run.py --proxy-only): their targets and tables."""
    lines = [
        "# Benchmarks: the proxy legs",
        "",
        f"{results['when']} on {platform.machine()}, {results['cpus']} CPUs; "
        f"medians of {results['rounds']} rounds of {results['seconds']} s per case, legs "
        "interleaved in each round." + _code(results.get("code")),
        "",
        *_table(
            ["target", "measured", "met"],
            [
                [t, m, "n/a" if ok is None else "yes" if ok else "**no**"]
                for t, m, ok in report_proxy.targets(proxy_part(results))
            ],
        ),
        "",
        *report_proxy.sections(proxy_part(results)),
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 -- only `./script/bench` installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    overhead: list[Row] = results["proxy_overhead"]
    legs = list(report_proxy.HEADER_LEGS)
    concurrency = sorted({r["concurrency"] for r in overhead if r["body"] == "small"})
    fig, (rps_ax, cpu_ax, mem_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / len(legs)
    for index, leg in enumerate(legs):
        values = [_row(overhead, leg, "small", c)["rps"] for c in concurrency]
        xs = [i + (index - (len(legs) - 1) / 2) * width for i in range(len(concurrency))]
        rps_ax.bar(xs, values, width, label=leg)
    rps_ax.set_xticks(range(len(concurrency)), [f"c={c}" for c in concurrency])
    rps_ax.set_yscale("log")
    rps_ax.set_title("requests/s, small body (log scale)")
    rps_ax.legend()
    for index, leg in enumerate(legs[1:], start=1):  # colours as in the bars
        values = [_row(overhead, leg, "small", c)["cpu_us_per_request"] for c in concurrency]
        ticks = [f"c={c}" for c in concurrency]
        cpu_ax.plot(ticks, values, marker="o", label=leg, color=f"C{index}")
    cpu_ax.set_title("proxy CPU per request (us)")
    cpu_ax.legend()
    rows = results["memory"]["rows"]
    mem_ax.plot(
        [r["principals"] for r in rows],
        [r["pss_mib"] for r in rows],
        marker="o",
        label="bureau-proxy PSS",
    )
    mem_ax.plot(
        [r["principals"] for r in rows],
        [15 * r["principals"] for r in rows],
        linestyle="--",
        label="target: 15 MiB/principal",
    )
    mem_ax.set_xlabel("principals")
    mem_ax.set_title("memory (MiB)")
    mem_ax.legend()
    fig.suptitle(f"bureau benchmarks, {results['when']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
