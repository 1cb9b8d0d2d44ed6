"""CPU µs of the state calls of one accepted request, in process, Redis against memory state.

    .venv/bin/python -m bench.state_cost [--rev REV] [--requests 6000] [--repeat 2]

The three calls an accepted request makes with every limit on (stage 5: per-IP + global cells,
stage 10: the per-issuer cell, stages 14 + 13: quota + jti) through the `StateBackend` API, from
1, 8 and 32 concurrent callers, against a throwaway redis-server on a free loopback port (its
own CPU is not counted; unpinned). Printed: user + system CPU µs of the calling process per
request, Redis and memory. With --rev, the gateway package at that git revision is measured too,
alternated with the working tree (each in its own `python -P` process), for before/after.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench.procs import add_revision_arguments, measure_revisions, start_redis

_CHILD = r'''
import asyncio, json, resource, sys, uuid
import uvloop
from gateway.config.model import RedisSettings
from gateway.state.base import Cell
from gateway.state.memory import MemoryState
from gateway.state.redis import RedisState

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

async def measure(state, requests, callers):
    stage5 = [Cell("per_ip:192.0.2.1", 1e-6, 10**6), Cell("global:all", 1e-6, 10**6)]
    stage10 = [Cell("per_issuer_unverified:0123456789abcdef:192.0.2.1", 1e-6, 10**6)]
    quota = Cell("per_client:bench", 1e-6, 10**6)
    jtis = iter([uuid.uuid4().hex for _ in range(2 * requests + 64 * callers)])

    async def caller(count):
        for _ in range(count):
            await state.take(stage5)
            await state.take(stage10)
            await state.admit("bench", next(jtis), 60.0, quota)

    await caller(32)  # connect, load the scripts
    started = cpu()
    await asyncio.gather(*(caller(requests // callers) for _ in range(callers)))
    return (cpu() - started) / (requests // callers * callers) * 1e6

async def main():
    port, requests = int(sys.argv[1]), int(sys.argv[2])
    redis = RedisState(RedisSettings(url=f"redis://127.0.0.1:{port}/0", timeout="1s", prefix="state-cost:"))
    memory = MemoryState()
    out = {}
    for callers in (1, 8, 32):
        out[f"redis x{callers}"] = await measure(redis, requests, callers)
        out[f"memory x{callers}"] = await measure(memory, requests, callers)
    await redis.close()
    print("STATE_COST " + json.dumps(out), file=sys.stderr)

uvloop.run(main())
'''


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.state_cost")
    add_revision_arguments(parser, repeat=2)
    parser.add_argument("--requests", type=int, default=6000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bearer-gateway-state-cost-"))
    redis = start_redis(workdir, None)
    if isinstance(redis, str):
        raise SystemExit(redis)
    proc, port = redis
    try:
        child = workdir / "child.py"
        child.write_text(_CHILD)
        results = measure_revisions(child, [str(port), str(args.requests)], "STATE_COST",
                                    rev=args.rev, repeat=args.repeat, workdir=workdir)
        print("CPU µs per accepted request (three state calls), runs separated by '/':")
        for name, runs in results.items():
            cells = "  ".join(f"{case} {'/'.join(f'{r[case]:.0f}' for r in runs)}" for case in runs[0])
            print(f"{name:14} {cells}")
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
