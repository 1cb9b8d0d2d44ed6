"""`make fuzz`: coverage-guided fuzzing (atheris) of the gateway listener and pre-signature pipeline.

    python fuzz/run.py --seconds 60 [--corpus fuzz/corpus]

Bounded in time; a crash is written under fuzz/crashes/ (libFuzzer's crash-<sha1> file) and the run
exits non-zero; copy the file into fuzz/corpus/ once fixed: tests/integration/test_hardening_fuzz.py
replays every corpus file over a real socket. Where atheris cannot be installed, the same target is
driven by hypothesis (random, not coverage-guided) for the same time, and the run says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--corpus", default=str(HERE / "corpus"))
    args, rest = parser.parse_known_args()
    try:
        import atheris
    except ImportError:
        return hypothesis_fallback(args.seconds)
    with atheris.instrument_imports(include=["gateway"]):
        # Every gateway module imported here, inside the block, so that it is instrumented.
        import gateway.config
        import gateway.jose.signing
        import gateway.server.app  # noqa: F401  (pulls in the token route, checks, runtime)
    from fuzz.target import Target
    target = Target()
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    work = Path(os.environ.get("FUZZ_WORK_CORPUS", "/tmp/bearer-gateway-fuzz-corpus"))
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-max_total_time={args.seconds}", f"-artifact_prefix={crashes}/", "-max_len=4096",
            "-timeout=10", "-print_final_stats=1", f"-dict={HERE / 'gateway.dict'}", *rest, str(work), args.corpus]
    print(f"fuzz: atheris, {args.seconds}s, corpus {args.corpus} (+ {work})", flush=True)
    atheris.Setup(argv, target.one)
    atheris.Fuzz()  # exits the process: 0 when the time is up, non-zero on a crash
    return 0


def hypothesis_fallback(seconds: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fuzz.target import Target

    print(f"fuzz: atheris is not installed here; hypothesis-driven random inputs for {seconds}s instead", flush=True)
    target = Target()
    deadline = time.monotonic() + seconds
    runs = 0

    @settings(max_examples=10**9, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=4096))
    def one(data: bytes) -> None:
        nonlocal runs
        if time.monotonic() > deadline:
            raise TimeoutError
        runs += 1
        target.one(data)

    try:
        one()
    except TimeoutError:
        pass
    finally:
        target.close()
    print(f"fuzz: {runs} inputs, no failure", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
