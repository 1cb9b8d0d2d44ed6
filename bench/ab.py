"""A/B the gateway against another version of itself: the working tree vs a git revision, same scenario.

    .venv/bin/python -m bench.ab --rev HEAD~1 [--paths reject,forged,accept] [--duration 5] [--rounds 4]
    .venv/bin/python -m bench.ab --old-src DIR ...   # DIR holds another `gateway` package

For hot-path changes: both versions run side by side, alternated, and the report gives the median
throughput ratio (new / old) and CPU µs per request of each. Nothing is written under bench/results/.

Each side imports its own revision: the gateway runs as `python -P` (the repository folder is not put
on sys.path) with PYTHONPATH naming that side's tree, and before any load the tool asks the same
interpreter, with the same environment, where `gateway` comes from and stops if a side would run the
wrong tree. (Before this, the current folder won over PYTHONPATH and both sides ran the working tree.)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.assertions import forged_bodies, new_client, unknown_issuer_bodies
from bench.procs import ROOT, cpu_count, export, free_port, start_nginx
from bench.scenarios import Bodies, Scenario, Settings, Side, alternate
from bench.servers import Bench, Server, gateway_config, gateway_origin, start_gateway


def check_origin(source: Path | None) -> Path:
    """The folder of the `gateway` package a side runs; SystemExit when it is not the intended tree."""
    want = ((source or ROOT) / "gateway").resolve()
    got = gateway_origin(source)
    if got != want:
        raise SystemExit(f"bench.ab: a side meant to run {want} would import {got}")
    return got


def run_ab(
    old_source: Path | None,
    old_label: str,
    *,
    paths: list[str],
    settings: Settings,
    workdir: Path,
    rev: str | None = None,
) -> list[dict[str, Any]]:
    """Working tree (A) vs the old tree (B), alternated; one summary per path, also printed."""
    pin = cpu_count() >= 2
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    nginx, static_as = start_nginx(workdir, load_cpus)
    rs = new_client("bench-rs256", "RS256")
    bench = Bench(workdir, static_as, {"rs": rs}, server_cpus, load_cpus)
    bench.started.append(nginx)
    results: list[dict[str, Any]] = []
    try:
        if old_source is None:
            assert rev is not None
            old_source = export(rev, workdir / "old")
        origins = {"new": check_origin(None), "old": check_origin(old_source)}
        print(f"new imports {origins['new']}\nold imports {origins['old']}", flush=True)
        servers = []
        for name, source in (("gw-new", None), ("gw-old", old_source)):
            config = gateway_config(bench, port=free_port(), admin_port=free_port())
            server = start_gateway(bench, name, config, cpus=server_cpus, source=source)
            if not isinstance(server, Server):
                raise SystemExit(f"{name}: {server}")
            servers.append(server)
        for path in paths:
            if path == "reject":
                bodies = unknown_issuer_bodies(2000)
                sides = [Side(s, Bodies(bench, f"{s.name}-{path}", cycle=bodies), 401) for s in servers]
            elif path == "forged":
                bodies = forged_bodies(rs, 2000)
                sides = [Side(s, Bodies(bench, f"{s.name}-{path}", cycle=bodies), 401) for s in servers]
            else:
                sides = [Side(s, Bodies(bench, f"{s.name}-{path}", client=rs), 200) for s in servers]
            sc = Scenario(path, path, "working tree", old_label, "throughput ratio", "report")
            alternate(bench, sc, sides[0], sides[1], settings, load_cpus=load_cpus)
            s = sc.summary
            print(
                f"{path:8} new {s['a_rps']:8.1f} req/s {s['a_cpu_us']} us/req | old ({old_label}) {s['b_rps']:8.1f} "
                f"req/s {s['b_cpu_us']} us/req | ratio {s['ratio']} {s['ratios']}",
                flush=True,
            )
            for note in sc.notes:
                print("   ", note)
            results.append({"path": path, "origins": {k: str(v) for k, v in origins.items()}, **s})
    finally:
        for proc in reversed(bench.started):
            proc.stop()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.ab")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rev", help="git revision of the old side")
    group.add_argument("--old-src", type=Path, help="a folder holding the old side's `gateway` package")
    parser.add_argument("--paths", default="reject,forged,accept")
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bearer-gateway-ab-"))
    settings = Settings(duration=args.duration, rounds=args.rounds, warmup=args.warmup)
    try:
        run_ab(
            args.old_src.resolve() if args.old_src else None,
            args.rev or str(args.old_src),
            paths=args.paths.split(","),
            settings=settings,
            workdir=workdir,
            rev=args.rev,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
