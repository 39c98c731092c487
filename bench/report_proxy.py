"""The proxy's part of bench/results/latest.md: its targets (issue #18's, as ratios in the
same run) and the tables of the header legs, the credential kinds and response cleaning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
Target = tuple[str, str, bool | None]  # (target, measured, met; None: not measured)

HEADER_LEGS = ("direct", "bureau-proxy", "nginx-proxy", "haproxy")
KIND_LEGS = ("bureau header", "bureau aws_sigv4", "bureau aws_sigv4 s3")
CLEANED, NOT_CLEANED = "cleaned (text/plain)", "not cleaned (binary)"
C = 16


def find(rows: list[Row], leg: str, body: str, concurrency: int) -> Row | None:
    return next(
        (r for r in rows if (r["leg"], r["body"], r["concurrency"]) == (leg, body, concurrency)),
        None,
    )


def row(rows: list[Row], leg: str, body: str, concurrency: int) -> Row:
    found = find(rows, leg, body, concurrency)
    if found is None:
        raise KeyError(f"no {leg} {body} c={concurrency} in the results")
    return found


def _ratio(
    rows: list[Row],
    unavailable: dict[str, str],
    key: str,
    ours: tuple[str, str],
    theirs: tuple[str, str],
) -> tuple[float | None, str]:
    """rows[ours][key] / rows[theirs][key] at c=16, or None and why not."""
    for leg in (ours[0], theirs[0]):
        if leg in unavailable:
            return None, f"not available: {unavailable[leg]}"
    a, b = find(rows, ours[0], ours[1], C), find(rows, theirs[0], theirs[1], C)
    if a is None or b is None or not a[key] or not b[key]:
        return None, "not measured"
    return a[key] / b[key], ""


def targets(proxy: dict[str, Any]) -> list[Target]:
    """(target, measured, met) for every proxy target this run measures."""
    rows: list[Row] = proxy["rows"]
    unavailable: dict[str, str] = proxy.get("unavailable", {})
    ours, nginx = row(rows, "bureau-proxy", "small", C), row(rows, "nginx-proxy", "small", C)
    haproxy, direct = row(rows, "haproxy", "small", C), row(rows, "direct", "small", C)
    cpu_ratio = ours["cpu_us_per_request"] / nginx["cpu_us_per_request"]
    vs_haproxy = ours["cpu_us_per_request"] / haproxy["cpu_us_per_request"]
    added_p99_ms = (ours["p99_us"] - direct["p99_us"]) / 1000
    loadgen_ratio = direct["rps"] / max(nginx["rps"], haproxy["rps"])
    found: list[Target] = [
        (
            "load generator not the bottleneck: direct >= 2x the faster of nginx and HAProxy "
            "req/s (c=16)",
            f"{loadgen_ratio:.1f}x",
            loadgen_ratio >= 2,
        ),
        (
            "header injection CPU per request <= 1.5x nginx's (c=16)",
            f"{cpu_ratio:.2f}x (HAProxy's: {vs_haproxy:.2f}x)",
            cpu_ratio <= 1.5,
        ),
        (
            "proxy req/s >= 0.5x nginx's (c=16)",
            f"{ours['rps'] / nginx['rps']:.2f}x",
            ours["rps"] / nginx["rps"] >= 0.5,
        ),
        ("added p99 over direct <= 0.5 ms (c=16)", f"{added_p99_ms:.2f} ms", added_p99_ms <= 0.5),
    ]
    body = next((r["body"] for r in rows if r["leg"] == "bureau header"), "256B")
    for leg, what in (
        ("bureau aws_sigv4", "hashed payload, execute-api"),
        ("bureau aws_sigv4 s3", "UNSIGNED-PAYLOAD, s3"),
    ):
        ratio, why = _ratio(
            rows, unavailable, "cpu_us_per_request", (leg, body), ("bureau header", body)
        )
        found.append(
            (
                f"SigV4 ({what}) CPU per request <= 2x the header kind's ({body} body, c=16)",
                why or f"{ratio:.2f}x",
                None if ratio is None else ratio <= 2,
            )
        )
    for size in sorted({r["body"] for r in rows if r["leg"] == NOT_CLEANED}, key=len):
        ratio, why = _ratio(
            rows, unavailable, "cpu_us_per_mib", (CLEANED, size), (NOT_CLEANED, size)
        )
        found.append(
            (
                f"response cleaning CPU per MiB <= 1.1x without ({size} text bodies, c=16)",
                why or f"{ratio:.2f}x",
                None if ratio is None else ratio <= 1.1,
            )
        )
    return found


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


fmt: Callable[[Any], str] = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731


def _cpu(r: Row) -> str:
    """CPU per request, with the kernel's part of it when known."""
    total, system = r["cpu_us_per_request"], r.get("system_us_per_request")
    if total is None:
        return "-"
    return f"{total:,.1f}" + ("" if system is None else f" ({system:,.1f})")


def _leg_rows(rows: list[Row], legs: tuple[str, ...]) -> list[list[str]]:
    return [
        [
            r["leg"],
            r["body"],
            str(r["concurrency"]),
            fmt(r["rps"]),
            fmt(r["p50_us"]),
            fmt(r["p99_us"]),
            _cpu(r),
            str(r["errors"]),
        ]
        for r in rows
        if r["leg"] in legs
    ]


def _ratios(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        if r["leg"] != "bureau-proxy":
            continue
        cells = [r["body"], str(r["concurrency"])]
        for key, digits in (("cpu_us_per_request", 2), ("rps", 2)):
            for other in ("nginx-proxy", "haproxy"):
                them = find(rows, other, r["body"], r["concurrency"])
                ok = them is not None and them[key] and r[key]
                cells.append(f"{r[key] / them[key]:.{digits}f}x" if ok and them else "-")
        out.append(cells)
    return out


def sections(proxy: dict[str, Any]) -> list[str]:
    rows: list[Row] = proxy["rows"]
    unavailable: dict[str, str] = proxy.get("unavailable", {})
    notes: dict[str, Any] = proxy.get("notes", {})
    header = ["leg", "body", "c", "req/s", "p50 us", "p99 us", "CPU us/req (kernel)", "errors"]
    oauth = ("bureau-proxy", "bureau oauth2")
    kinds = _leg_rows(rows, KIND_LEGS)
    kinds += [r for r in _leg_rows(rows, oauth) if r[1:3] == ["small", str(C)]]
    kinds += [
        [leg, "-", str(C), f"not available: {reason}", "", "", "", ""]
        for leg, reason in unavailable.items()
        if leg in (*KIND_LEGS, *oauth)
    ]
    cleaning = [
        [
            r["leg"],
            r["body"],
            str(r["concurrency"]),
            fmt(r["rps"]),
            fmt(r["mib_per_s"]),
            fmt(r["p99_us"]),
            _cpu(r),
            fmt(r["cpu_us_per_mib"]),
            str(r["errors"]),
        ]
        for r in rows
        if r["leg"] in (CLEANED, NOT_CLEANED)
    ]
    cleaning += [
        [leg, "-", str(C), f"not available: {reason}", "", "", "", "", ""]
        for leg, reason in unavailable.items()
        if leg in (CLEANED, NOT_CLEANED)
    ]
    fetched = None if "bureau oauth2" in unavailable else notes.get("oauth2_token_requests")
    return [
        "## Proxy overhead",
        "",
        "direct: the load generator to the nginx upstream's Unix socket; bureau-proxy, "
        "nginx-proxy and haproxy: the same request through each (one process, one worker or "
        "thread each), injecting `Authorization`, to the upstream on loopback TCP. CPU is "
        "the proxy's own (user + system) per request, the system (kernel) part in "
        "brackets. The 64 KiB body is "
        "application/octet-stream, so no proxy reads it through.",
        "",
        *_table(header, _leg_rows(rows, HEADER_LEGS)),
        "",
        "bureau-proxy over each of the others, same case:",
        "",
        *_table(
            ["body", "c", "CPU / nginx", "CPU / HAProxy", "req/s / nginx", "req/s / HAProxy"],
            _ratios(rows),
        ),
        "",
        "## Credential kinds",
        "",
        "One more bureau-proxy with a route per kind, each to the same upstream: the header "
        "kind, `aws_sigv4` for execute-api (the body hashed) and for s3 (UNSIGNED-PAYLOAD, "
        "a PUT), each with a small JSON body; and `oauth2` client credentials against the "
        "real authorization server (tests/support/oauth_server.py), a GET measured in the "
        "header legs' small c=16 case (bureau-proxy's row repeated beside it).",
        "",
        *_table(header, kinds),
        "",
        *(
            [
                f"The authorization server answered {fetched} token request(s) in the whole "
                "run; every other oauth2 request was served with the token the proxy held.",
                "",
            ]
            if fetched is not None
            else []
        ),
        "## Response cleaning",
        "",
        "The s3 route (SigV4, UNSIGNED-PAYLOAD) fetching the same bytes (JSON lines with ISO "
        "8601 times) as text/plain, which the proxy reads through for its secrets, and as "
        "application/octet-stream, which it passes as is; that the text is cleaned is checked "
        "first (an echo of the Authorization sent comes back with the access key id hidden).",
        "",
        *_table(
            ["leg", "body", "c", "req/s", "MiB/s", "p99 us", "CPU us/req", "CPU us/MiB", "errors"],
            cleaning,
        ),
        "",
    ]
