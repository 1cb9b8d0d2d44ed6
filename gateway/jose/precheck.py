"""Which pre-check implementation runs: the compiled module (gateway/_precheck.pyx, Cython) or the pure-Python
parsers it mirrors. Chosen once, at import: the compiled one when it was built and imports, unless
BEARER_GATEWAY_PURE=1 forces the pure one. Both give the same results and raise the same exceptions
(tests/property/test_compiled_equivalence.py); `IMPLEMENTATION` names the active one for the `started`
log line and `bearer-gateway --version`."""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["COMPILED", "IMPLEMENTATION", "PURE_ENV"]

PURE_ENV = "BEARER_GATEWAY_PURE"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"pure-python ({PURE_ENV}={os.environ[PURE_ENV]})"
    try:
        from gateway import _precheck  # type: ignore[attr-defined]
    except ImportError:
        return None, "pure-python (compiled module not built)"
    return _precheck, "compiled (Cython)"


COMPILED, IMPLEMENTATION = _load()
