"""Sample the gateway with py-spy while wrk saturates it: the accept path and the cheap reject path."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

from bench.assertions import mint_bodies, unknown_issuer_bodies, write_bodies
from bench.loadgen import run_wrk
from bench.procs import VENV_BIN, free_port
from bench.servers import Bench, Server, gateway_config, start_gateway
from bench.stacks import categorise, summarise


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")


def profile(bench: Bench, seconds: float = 6.0) -> dict[str, Any]:
    spy = py_spy()
    if spy is None:
        return {"status": "not available: py-spy not installed (bench/run.sh installs it)"}
    config = gateway_config(bench, port=free_port(), admin_port=free_port())
    server = start_gateway(bench, "gw-profile", config, cpus=bench.server_cpus)
    if not isinstance(server, Server):
        return {"status": f"not available: {server}"}
    paths: dict[str, Any] = {}
    try:
        rs = bench.clients["rs"]
        cases = [
            (
                "accept path, RS256, memory state",
                write_bodies(bench.workdir / "profile-accept.txt", mint_bodies(rs, int(seconds * 3000) + 2000)),
                200,
                True,
            ),
            (
                "cheap reject, unknown iss",
                write_bodies(bench.workdir / "profile-reject.txt", unknown_issuer_bodies(2000)),
                401,
                False,
            ),
        ]
        for name, bodies, expected, once in cases:
            raw = bench.workdir / f"profile-{expected}.raw"
            # Blocking sampling (py-spy pauses the process ~250 times a second): --nonblocking reads the
            # stacks of a running interpreter and loses their roots in about half of the samples.
            sampler = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(server.proc.pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)
            result = run_wrk(
                server.url,
                bodies,
                duration=seconds + 1,
                connections=32,
                expected_status=expected,
                once=once,
                workdir=bench.workdir,
                cpus=bench.load_cpus,
            )
            _, err = sampler.communicate(timeout=30)
            if not raw.exists():
                return {"status": f"not available: py-spy failed: {err.strip()[-300:]}"}
            paths[name] = {**summarise(raw, top=15), "categories": categorise(raw), "rps": result.rps}
    finally:
        server.stop()
    return {"status": "ok", "paths": paths}
