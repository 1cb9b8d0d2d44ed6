"""Audit the lock files against published advisories (pip-audit); say plainly when it could not.

Exit 1 when a locked dependency has a known vulnerability. When the advisory data cannot be reached
(no network, or an index that serves no vulnerability data) nothing was audited: that is printed as
NOT AUDITED and exits 0, unless AUDIT_STRICT=1 (then 2), so CI on an isolated machine stays green
while saying what it did not check. README "Dependencies" gives the procedure on a connected machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LOCKS = ("requirements.lock", "requirements-ci.lock")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    strict = os.environ.get("AUDIT_STRICT") == "1"
    service = os.environ.get("AUDIT_SERVICE", "pypi")  # pip-audit's services: pypi or osv
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "--disable-pip", "--require-hashes", "--progress-spinner", "off",
                   "-s", service, "-f", "json", "-o", str(report)]
        for lock in LOCKS:
            command += ["-r", str(root / lock)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if not report.exists():
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"audit: NOT AUDITED: pip-audit could not reach the advisory service ({service}): {tail}")
            return 2 if strict else 0
        dependencies = json.loads(report.read_text())["dependencies"]
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    for dep in vulnerable:
        ids = ", ".join(v["id"] for v in dep["vulns"])
        print(f"audit: VULNERABLE {dep['name']} {dep['version']}: {ids}")
    if vulnerable:
        return 1
    if audited == 0:
        print(f"audit: NOT AUDITED: the advisory service ({service}) answered for none of the "
              f"{len(dependencies)} locked dependencies (unreachable from this machine); "
              "run `make audit` where it is reachable (README: Dependencies)")
        return 2 if strict else 0
    print(f"audit: {audited} locked dependencies audited, no known vulnerabilities"
          + (f"; {len(skipped)} could not be audited" if skipped else ""))
    return 2 if strict and skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
