"""A/B the gateway against another version of itself: the working tree vs a git revision, same scenario.

    .venv/bin/python -m bench.ab --rev HEAD~1 [--paths reject,forged,accept] [--duration 5] [--rounds 4]

For hot-path changes: both versions run side by side, alternated, and the report gives the median
throughput ratio and CPU µs per request of each. Nothing is written under bench/results/.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.assertions import forged_bodies, new_client, unknown_issuer_bodies
from bench.procs import cpu_count, export, free_port, start_nginx
from bench.scenarios import Bodies, Scenario, Settings, Side, alternate
from bench.servers import Bench, Server, gateway_config, start_gateway


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.ab")
    parser.add_argument("--rev", required=True)
    parser.add_argument("--paths", default="reject,forged,accept")
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    pin = cpu_count() >= 2
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    workdir = Path(tempfile.mkdtemp(prefix="bearer-gateway-ab-"))
    settings = Settings(duration=args.duration, rounds=args.rounds, warmup=1.0)
    nginx, static_as = start_nginx(workdir, load_cpus)
    rs = new_client("bench-rs256", "RS256")
    bench = Bench(workdir, static_as, {"rs": rs}, server_cpus, load_cpus)
    bench.started.append(nginx)
    try:
        old_src = export(args.rev, workdir / "old")
        servers = []
        for name, source in (("gw-new", None), ("gw-old", old_src)):
            config = gateway_config(bench, port=free_port(), admin_port=free_port())
            server = start_gateway(bench, name, config, cpus=server_cpus, source=source)
            if not isinstance(server, Server):
                raise SystemExit(f"{name}: {server}")
            servers.append(server)
        new, old = servers
        for path in args.paths.split(","):
            if path == "reject":
                bodies = unknown_issuer_bodies(2000)
                sides = [Side(s, Bodies(bench, f"{s.name}-{path}", cycle=bodies), 401) for s in servers]
            elif path == "forged":
                bodies = forged_bodies(rs, 2000)
                sides = [Side(s, Bodies(bench, f"{s.name}-{path}", cycle=bodies), 401) for s in servers]
            else:
                sides = [Side(s, Bodies(bench, f"{s.name}-{path}", client=rs), 200) for s in servers]
            sc = Scenario(path, path, "working tree", args.rev, "throughput ratio", "report")
            alternate(bench, sc, sides[0], sides[1], settings, load_cpus=load_cpus)
            s = sc.summary
            print(
                f"{path:8} new {s['a_rps']:8.1f} req/s {s['a_cpu_us']} us/req | old ({args.rev}) {s['b_rps']:8.1f} "
                f"req/s {s['b_cpu_us']} us/req | ratio {s['ratio']} {s['ratios']}",
                flush=True,
            )
            for note in sc.notes:
                print("   ", note)
        del new, old
    finally:
        for proc in reversed(bench.started):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
