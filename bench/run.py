"""`make bench`: throughput and latency ratios against references, the flood shield, a profile.

    .venv/bin/python -m bench.run [--duration 5] [--rounds 3] [--only 1,3,6] [--no-shield] [--no-profile]

Loopback only. Every load run is bounded in time (and in requests where assertions must be unique),
and every process started here is stopped here. Results: bench/results/<stamp>.{json,md,png} and,
unless --no-latest, the same as bench/results/latest.*.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from bench import report
from bench.assertions import new_client
from bench.procs import ROOT, cpu_count, start_nginx, start_redis
from bench.scenarios import Runner, Settings
from bench.servers import Bench

RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", 5)))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)))
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", help="comma-separated scenario numbers (1-6) and/or 'shield', 'profile'")
    parser.add_argument("--no-shield", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-latest", action="store_true", help="do not overwrite bench/results/latest.*")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory (logs, configs)")
    parser.add_argument("--shared", action="store_true", help="say in the report that the machine was shared")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    settings = Settings(duration=args.duration, warmup=args.warmup, rounds=args.rounds, connections=args.connections)

    signal.signal(signal.SIGTERM, _interrupt)
    cores = cpu_count()
    pin = cores >= 2 and not args.no_pin
    server_cpus, load_cpus = ("0", "1") if pin else (None, None)
    placement = (
        "system under test pinned to CPU 0; wrk, nginx and Redis pinned to CPU 1 (taskset); scenario 5 and the "
        "shield unpinned"
        if pin
        else "no CPU pinning"
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data: dict[str, object] = {
        "started": started,
        "machine": report.machine(),
        "settings": asdict(settings),
        "placement": placement,
        "shared": args.shared,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bearer-gateway-bench-"))
    log(f"work directory {workdir}; {placement}")
    bench: Bench | None = None
    began = time.monotonic()
    try:
        nginx, static_as = start_nginx(workdir, load_cpus)
        log(f"static AS (nginx) at {static_as}")
        clients = {"rs": new_client("bench-rs256", "RS256"), "es": new_client("bench-es256", "ES256")}
        bench = Bench(workdir, static_as, clients, server_cpus, load_cpus)
        bench.started.append(nginx)
        redis = start_redis(workdir, load_cpus)
        if isinstance(redis, str):
            bench.redis_missing = redis
        else:
            bench.started.append(redis[0])
            bench.redis_port = redis[1]
        runner = Runner(bench, settings, log)
        scenario_ids = None if only is None else {x for x in only if x[:1].isdigit()}
        if only is None or scenario_ids:
            runner.run_all(scenario_ids)
        data["scenarios"] = [sc.as_dict() for sc in runner.scenarios]
        if not args.no_shield and (only is None or "shield" in only):
            from bench.shield import shield

            log("shield: flood + legit trickle against Keycloak")
            data["shield"] = shield(bench, settings, log)
            log(f"  {data['shield'].get('status')}")
        if not args.no_profile and (only is None or "profile" in only):
            from bench.profiling import profile

            log("profile: py-spy on the accept and reject paths")
            data["profile"] = profile(bench)
    except KeyboardInterrupt:
        log("interrupted; stopping what was started")
        return 130
    finally:
        if bench is not None:
            for proc in reversed(bench.started):
                proc.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    data["loadavg_end"] = os.getloadavg()
    data["seconds"] = round(time.monotonic() - began, 1)
    written = report.write(data, RESULTS, stamp, latest=not args.no_latest)
    log(f"done in {data['seconds']} s: " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    print()
    print(report.markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
