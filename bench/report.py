"""One run's results as JSON, a markdown report and a PNG plot."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "missing"
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> dict[str, Any]:
    """What the numbers ran on; a shared machine is said to be shared."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    versions = {}
    for package in ("aiohttp", "uvloop", "cryptography", "PyJWT", "prometheus-client", "redis"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]).split("Copyright")[0].strip(),
        "redis": _version(["redis-server", "--version"]),
        "loadavg_start": os.getloadavg(),
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _result_cell(sc: dict[str, Any]) -> str:
    if sc["status"] != "ok":
        return sc["status"]
    s = sc["summary"]
    if sc["metric"] == "p99 added":
        return (
            f"p99 {s['p99_added_ms']:+.2f} ms, p50 {s['p50_added_ms']:+.2f} ms "
            f"(rounds {', '.join(f'{x:+.2f}' for x in s['p99_added_per_round_ms'])})"
        )
    rounds = ", ".join(f"{r:.2f}" for r in s["ratios"])
    return f"**{s['ratio']:.2f}** ({rounds})"


def _floor_cell(sc: dict[str, Any]) -> str:
    """The gateway against the raw floor (asyncio Protocol + httptools reference), when the scenario has one."""
    s = sc["summary"]
    if sc["status"] != "ok" or not sc.get("c"):
        return "-"
    if "floor_p99_added_ms" in s:
        return f"p99 {s['floor_p99_added_ms']:+.2f} ms, p50 {s['floor_p50_added_ms']:+.2f} ms"
    if s.get("floor_ratio") is None:
        return "-"
    return f"**{s['floor_ratio']:.2f}** ({', '.join(f'{r:.2f}' for r in s['floor_ratios'])})"


def _met(sc: dict[str, Any]) -> str:
    return {True: "yes", False: "**no**", None: "-"}[sc["met"]]


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    st = data["settings"]
    lines = [
        f"# Bearer Gateway benchmark — {data['started']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}, "
        f"aiohttp {m['packages']['aiohttp']}, uvloop {m['packages']['uvloop']}, cryptography "
        f"{m['packages']['cryptography']}; {m['nginx']}; {m['wrk']}. Load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in data.get('loadavg_end', ()))}"
        + (" — the machine was shared with other work during the run." if data.get("shared") else "."),
        "",
        f"Runs: {st['duration']:.0f} s each after a {st['warmup']:.0f} s warm-up per server, {st['rounds']} rounds "
        f"alternated (A B, B A, …), {st['connections']} connections (paced runs {st['paced_connections']}), "
        f"one wrk thread. Placement: {data['placement']}. Ratios are A/B of requests per second that got the "
        "expected status; the cell shows the median and, in brackets, each round. CPU µs/req: CPU time of the "
        "server process (and its workers) per answered request, from /proc — steadier than req/s on a shared machine.",
        "",
        "C is the raw floor: the same reference on asyncio Protocol + httptools (`raw-reject`, "
        "`raw-verify-proxy`), loaded in the same rotation (A B C, B C A, C A B).",
        "",
        "| # | scenario | A (measured) | B (reference) | A req/s | B req/s | C req/s | A p99 ms | B p99 ms "
        "| A CPU µs/req | B CPU µs/req | C CPU µs/req | result A/B | target | met | A/C (raw floor) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for sc in data["scenarios"]:
        s = sc["summary"]
        lines.append(
            f"| {sc['id']} | {sc['title']} | {sc['a']} | {sc['b']} | {_fmt(s.get('a_rps'))} | {_fmt(s.get('b_rps'))} | "
            f"{_fmt(s.get('c_rps'))} | {_fmt(s.get('a_p99_ms'), 2)} | {_fmt(s.get('b_p99_ms'), 2)} | "
            f"{_fmt(s.get('a_cpu_us'))} | {_fmt(s.get('b_cpu_us'))} | {_fmt(s.get('c_cpu_us'))} | {_result_cell(sc)} | "
            f"{sc['target']} | {_met(sc)} | {_floor_cell(sc)} |"
        )
    notes = [(sc["id"], n) for sc in data["scenarios"] for n in sc.get("notes", [])]
    if notes:
        lines += ["", "Notes:"] + [f"- {i}: {n}" for i, n in notes]
    shield = data.get("shield")
    if shield:
        lines += ["", "## Shield: a flood of forged and expired assertions, and a 10/s trickle of valid requests", ""]
        if shield["status"] != "ok":
            lines.append(shield["status"])
        else:
            lines += [
                shield.get("description", ""),
                "",
                "| flood sent | flood req/s | legit sent | legit success | legit p50 ms | legit p99 ms | "
                "Keycloak CPU s | flood requests that reached Keycloak |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for run in shield["runs"]:
                lines.append(
                    f"| {run['flood_target']} | {_fmt(run['flood_rps'])} | {run['legit_sent']} | "
                    f"{100 * run['legit_success']:.1f}% | {_fmt(run['legit_p50_ms'], 1)} | "
                    f"{_fmt(run['legit_p99_ms'], 1)} | {_fmt(run['keycloak_cpu_s'], 1)} | "
                    f"{run['flood_reached_keycloak']} |"
                )
            lines += [""] + [f"- {n}" for n in shield.get("notes", [])]
    profile = data.get("profile")
    if profile:
        lines += ["", "## Where the gateway's time goes (py-spy, sampled during saturation runs)", ""]
        if profile.get("status", "ok") != "ok":
            lines.append(profile["status"])
        paths = profile.get("paths", {})
        if paths:
            names = list(paths)
            lines += [
                "Share of the gateway's samples by kind of work (each sample counted once, first match):",
                "",
                "| work | " + " | ".join(names) + " |",
                "|---|" + "---:|" * len(names),
            ]
            for i, (category, _) in enumerate(paths[names[0]].get("categories", [])):
                cells = [f"{paths[n]['categories'][i][1]}%" for n in names]
                lines.append(f"| {category} | " + " | ".join(cells) + " |")
            lines.append("")
        for name, prof in paths.items():
            lines += [
                f"**{name}** — {prof['samples']} samples; share of the gateway process's busy samples:",
                "",
                "| function (self time) | % | gateway function (inclusive) | % |",
                "|---|---:|---|---:|",
            ]
            incl = [row for row in prof["inclusive"] if _request_path(row[0])][:12]
            for i in range(max(len(prof["self"][:12]), len(incl))):
                own = prof["self"][i] if i < len(prof["self"][:12]) else ("", "")
                inc = incl[i] if i < len(incl) else ("", "")
                lines.append(f"| `{own[0]}` | {own[1]} | `{inc[0]}` | {inc[1]} |")
            lines.append("")
    lines += ["", f"Raw data: `{data['json_name']}`; plot: `{data['png_name']}`.", ""]
    return "\n".join(lines)


# Inclusive rows shown: the gateway's own functions below the request entry point.
_NOT_REQUEST_PATH = ("main (gateway/cli.py)", "cmd_run (gateway/cli.py)", "<module> (gateway/cli.py)", "serve (")


def _request_path(name: str) -> bool:
    return "(gateway/" in name and not name.startswith(_NOT_REQUEST_PATH)


def plot(data: dict[str, Any], path: Path) -> bool:
    """Throughput and p99 per scenario, A next to B; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [sc for sc in data["scenarios"] if sc["status"] == "ok"]
    labels = [f"{sc['id']}\n{sc.get('short') or sc['title'][:22]}" for sc in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(rows) + 2), 8), constrained_layout=True)
    width = 0.38
    xs = range(len(rows))
    for axis, key, title in (
        (top, "rps", "throughput (req/s with the expected status)"),
        (bottom, "p99_ms", "p99 latency (ms)"),
    ):
        a = [sc["summary"].get(f"a_{key}") or 0 for sc in rows]
        b = [sc["summary"].get(f"b_{key}") or 0 for sc in rows]
        c = [sc["summary"].get(f"c_{key}") or 0 for sc in rows]
        axis.bar([x - width / 2 for x in xs], a, width / 2, label="A: measured (gateway)", color="#1f77b4")
        axis.bar(list(xs), b, width / 2, label="B: aiohttp reference", color="#bbbbbb")
        axis.bar([x + width / 2 for x in xs], c, width / 2, label="C: raw floor (httptools)", color="#666666")
        for x, sc in zip(xs, rows, strict=True):
            summary = sc["summary"]
            paced = "p99_added_ms" in summary
            if key == "rps" and summary.get("ratio") is not None and not paced:
                text = f"{summary['ratio']:.2f}"
            elif key == "p99_ms" and paced:
                text = f"{summary['p99_added_ms']:+.1f} ms"
            else:
                continue
            axis.annotate(text, (x, max(a[x], b[x])), ha="center", va="bottom", fontsize=8)
        axis.set_xticks(list(xs), labels, fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    fig.suptitle(
        f"Bearer Gateway bench {data['started']} — {data['machine']['cpu']}, {data['machine']['cores']} cores",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(data: dict[str, Any], results: Path, stamp: str, *, latest: bool) -> list[Path]:
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (results / f"{stamp}.{ext}" for ext in ("json", "md", "png"))
    data["json_name"], data["png_name"] = json_path.name, png_path.name
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown(data))
    written = [json_path, md_path]
    if plot(data, png_path):
        written.append(png_path)
    if latest:
        for path in written:
            target = results / f"latest{path.suffix}"
            text_or_bytes = path.read_bytes()
            if path.suffix in (".md", ".json"):
                text_or_bytes = text_or_bytes.replace(stamp.encode(), b"latest")
            target.write_bytes(text_or_bytes)
    return written
