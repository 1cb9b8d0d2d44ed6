"""CPU µs per request of the gateway's own token handler, in process, without the HTTP server around it.

    .venv/bin/python -m bench.handler_cost [--rev REV] [--requests 3000] [--rounds 5]

Each path (cheap reject, forged signature, accept through the static AS) is driven through
`TokenHandler` with aiohttp's mocked requests; the figure is process CPU time per request, best of
the rounds — steady enough on a shared machine to see a hot-path change of a few µs. With --rev,
the same is measured for the `gateway` package at that git revision, interleaved, for before/after.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench.procs import add_revision_arguments, measure_revisions

_CHILD = r"""
import asyncio, json, sys, time
from unittest import mock

import uvloop
import yaml
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

try:  # as `bearer-gateway run` does: the audit log really written (the helper moved in issue 13)
    from gateway.logs import configure_logging
except ImportError:
    from gateway.cli import _configure_logging

    def configure_logging(fmt, level):
        _configure_logging(level)
from gateway.config import load_config
from gateway.server.app import Gateway
from gateway.server.token import TokenHandler

from bench.assertions import BenchClient, forged_bodies, mint_bodies, unknown_issuer_bodies

config_path, key_path, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rs = BenchClient("bench-rs256", "RS256", "bench-rs256-1", open(key_path, "rb").read())
# Minted here, just before use (fresh for the 300 s lifetime), and outside the timed loop.
bodies = {
    "reject": (unknown_issuer_bodies(500), 401),
    "forged": (forged_bodies(rs, 500), 401),
    "accept": (mint_bodies(rs, n * rounds, processes=1), 200),
}


def request(app, body):
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 2 ** 16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    payload.feed_eof()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body)),
               "Host": "gateway.bench"}
    return make_mocked_request("POST", "/oauth2/token", headers=headers, app=app, payload=payload)


async def main():
    config = load_config(config_path)
    configure_logging(getattr(config.logging, "format", "json"), config.logging.level)
    gateway = Gateway(config, config_path)
    await gateway.runtime.start()
    handler = TokenHandler()
    app = gateway.main_app
    out = {}
    for path, (texts, expected) in bodies.items():
        items = [b.encode() for b in texts]
        best = float("inf")
        for r in range(rounds):
            chunk = items[r * n:(r + 1) * n] if path == "accept" else (items * (n // len(items) + 1))[:n]
            reqs = [request(app, b) for b in chunk]
            t0 = time.process_time()
            for req in reqs:
                response = await handler(req)
                if response.status != expected:
                    raise SystemExit(f"{path}: status {response.status}, expected {expected}: {response.body!r}")
            best = min(best, (time.process_time() - t0) / len(reqs))
        out[path] = round(best * 1e6, 1)
    await gateway.runtime.close()
    print("HANDLER_COST " + json.dumps(out), file=sys.stderr)

uvloop.run(main())
"""


def main() -> None:
    from bench.assertions import new_client
    from bench.procs import start_nginx
    from bench.servers import Bench, gateway_config

    parser = argparse.ArgumentParser(prog="bench.handler_cost")
    add_revision_arguments(parser, repeat=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bearer-gateway-cost-"))
    nginx, static_as = start_nginx(workdir, None)
    try:
        rs = new_client("bench-rs256", "RS256")
        bench = Bench(workdir, static_as, {"rs": rs}, None, None)
        config = workdir / "gateway.yaml"
        import yaml

        conf = gateway_config(bench, port=0, admin_port=0)
        conf["logging"]["audit"] = True
        config.write_text(yaml.safe_dump(conf))
        key = workdir / "bench-rs256.pem"
        key.write_bytes(rs.pem)
        child = workdir / "child.py"
        child.write_text(_CHILD)
        # The audit log (stdout) goes to a file, as in the load runs.
        with open(workdir / "audit.jsonl", "ab") as audit:
            results = measure_revisions(
                child, [str(config), str(key), str(args.requests), str(args.rounds)], "HANDLER_COST",
                rev=args.rev, repeat=args.repeat, workdir=workdir, stdout=audit,
            )
        for name, runs in results.items():
            best = {path: min(r[path] for r in runs) for path in runs[0]}
            print(f"{name:14} " + "  ".join(f"{path} {us:7.1f} µs" for path, us in best.items()))
    finally:
        nginx.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
