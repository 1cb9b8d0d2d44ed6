#!/usr/bin/env bash
# `make demo`: Keycloak (cached after the first run) + the gateway + one CAMARA request.
# DEMO_ONESHOT=1 stops after the request (for tests); otherwise it serves until Ctrl-C.
# AS=hydra (`make demo AS=hydra`): Ory Hydra v2.3.0 instead of Keycloak (scripts/demo_hydra.py).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${AS:-keycloak}" in
    keycloak) exec .venv/bin/python scripts/demo.py "$@" ;;
    hydra) exec .venv/bin/python scripts/demo_hydra.py "$@" ;;
    *) echo "AS=${AS} is not known: keycloak (default) or hydra" >&2; exit 2 ;;
esac
