#!/usr/bin/env bash
# `make demo`: Keycloak (cached after the first run) + the gateway + one CAMARA request.
# DEMO_ONESHOT=1 stops after the request (for tests); otherwise it serves until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/demo.py "$@"
