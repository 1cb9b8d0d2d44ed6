"""wrk runs: saturation (closed loop, fixed connections) and paced (fixed arrival rate)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.procs import pinned

SCRIPT = Path(__file__).resolve().parent / "wrk" / "tokens.lua"


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    exhausted: int
    expected_status: int
    offered_rate: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def expected_share(self) -> float:
        answered = sum(self.statuses.values())
        return self.statuses.get(str(self.expected_status), 0) / answered if answered else 0.0

    @property
    def expected_rps(self) -> float:
        """Throughput of answers with the expected status only (a wrong answer is not throughput)."""
        return self.rps * self.expected_share

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["expected_share"] = round(self.expected_share, 5)
        out["expected_rps"] = round(self.expected_rps, 1)
        return out


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not installed (bench/run.sh installs it with apt-get)")
    return found


def run_wrk(
    url: str,
    bodies: Path,
    *,
    duration: float,
    connections: int,
    expected_status: int,
    once: bool,
    workdir: Path,
    rate: float | None = None,
    threads: int = 1,
    cpus: str | None = None,
    timeout: str = "5s",
    path: str = "/oauth2/token",
) -> WrkResult:
    """One bounded wrk run: it stops after `duration`, or earlier when `once` bodies run out."""
    script = SCRIPT.read_text()
    if rate:
        script += "\ndelay = paced_delay\n"
    script_path = workdir / ("wrk-paced.lua" if rate else "wrk-saturate.lua")
    script_path.write_text(script)
    cmd = pinned(
        [
            wrk_path(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={timeout}",
            "-s",
            str(script_path),
            url,
            "--",
            str(bodies),
            "once" if once else "cycle",
            str((rate or 0) / threads),
            str(threads),
            path,
            # A safety bound in requests on top of -d: far above any rate this machine reaches.
            str(int(max(duration, 1) * 200_000 / threads)),
        ],
        cpus,
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    seconds = data["duration_us"] / 1e6
    lat = data["latency_us"]
    return WrkResult(
        requests=data["requests"],
        duration_s=round(seconds, 3),
        rps=round(data["requests"] / seconds, 1) if seconds else 0.0,
        latency_ms={k: round(v / 1000, 3) for k, v in lat.items()},
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        socket_errors=data["errors"],
        exhausted=data["exhausted"],
        expected_status=expected_status,
        offered_rate=rate,
    )
