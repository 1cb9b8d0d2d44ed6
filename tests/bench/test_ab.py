"""bench.ab really runs two revisions: a copy of the gateway with a deliberate sleep measures slower."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from bench.ab import run_ab
from bench.procs import ROOT
from bench.scenarios import Settings

SLEEP_S = 0.005  # per request: the slowed side cannot exceed ~200 req/s


def slowed_copy(into: Path) -> Path:
    """The working tree's `gateway` package with a blocking sleep at the top of the token route's `handle`
    (what both listeners call for every token request that passed the route stage)."""
    shutil.copytree(ROOT / "gateway", into / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    handler = re.compile(r"^( *)async def handle\(incoming[^\n]*:\n", re.M)
    patched = 0
    for path in (into / "gateway").rglob("*.py"):
        text = path.read_text()
        if "def account(" not in text:  # server/token.py
            continue
        text, n = handler.subn(lambda m: m.group(0) + m.group(1) + f"    __import__('time').sleep({SLEEP_S})\n", text)
        path.write_text(text)
        patched += n
    assert patched == 1, "the token route's handle() was not found to slow it down"
    return into


def test_ab_sides_import_their_own_revision_and_the_slowed_one_measures_slower(tmp_path: Path) -> None:
    old = slowed_copy(tmp_path / "slowed")
    settings = Settings(duration=1.0, warmup=0.5, rounds=2, connections=8)
    (result,) = run_ab(old, "slowed copy", paths=["reject"], settings=settings, workdir=tmp_path / "work")
    assert result["origins"]["new"] == str((ROOT / "gateway").resolve())
    assert result["origins"]["old"] == str((old / "gateway").resolve())
    # Both sides answered; the working tree is several times faster than the copy sleeping 5 ms per request.
    assert result["b_rps"] > 0
    assert result["a_rps"] > 2 * result["b_rps"], result
    assert result["ratio"] > 2, result
