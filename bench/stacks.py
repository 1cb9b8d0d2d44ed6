"""Summarise py-spy's raw (collapsed) stacks: where a process spends its samples, by function."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    """`func (path/to/file.py:12)` → `func (path/to/file.py)`: one row per function, not per line."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"


def summarise(raw: Path, top: int = 15) -> dict[str, object]:
    """Self and inclusive sample shares per function, highest first."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "self": [(name, share(n)) for name, n in own.most_common(top)],
        "inclusive": [(name, share(n)) for name, n in inclusive.most_common(top * 3)],
    }


# Where a sample belongs, first match wins (metrics are counted as metrics wherever they are called).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics (tally, prometheus_client)", ("prometheus_client/", "(gateway/metrics.py")),
    ("audit log (json, batched write)", ("(gateway/audit.py",)),
    ("signature verification (cryptography via PyJWT)", ("VerificationKey.verify (",)),
    (
        "call to the AS (keep-alive pool or aiohttp client, request builder, answer)",
        ("UpstreamClient.send (", "UpstreamRequestBuilder.build (", "(gateway/upstream/"),
    ),
    ("rate limits (memory or Redis state)", ("gateway/checks/rate_limits.py", "gateway/state/")),
    ("replay check", ("Replay.__call__ (",)),
    ("assertion parsing (base64url, JSON)", ("parse_compact (",)),
    ("other checks (header, claims, issuer, ...)", ("(gateway/checks/",)),
    ("body read and form parsing", ("read_body (", "parse_form (")),
    (
        "token route: caller, request id, route, accounting, answer bytes",
        (
            "(gateway/server/token.py",
            "(gateway/server/wire.py",
            "(gateway/server/caller.py",
            "(gateway/server/correlation.py",
        ),
    ),
    ("HTTP server and event loop (lean listener + httptools, or aiohttp; uvloop)", ("",)),
)


def categorise(raw: Path) -> list[tuple[str, float]]:
    """Share of samples per category of work, in CATEGORIES order."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        total += int(count_text)
        for name, markers in CATEGORIES:
            if any(marker in stack for marker in markers):
                counts[name] += int(count_text)
                break
    return [(name, round(100.0 * counts[name] / total, 1) if total else 0.0) for name, _ in CATEGORIES]
