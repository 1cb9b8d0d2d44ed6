#!/usr/bin/env bash
# `make bench`: install what the benchmark needs when missing, then run it (a few minutes, loopback only).
# Extra arguments go to bench/run.py, e.g. `bash bench/run.sh --duration 3 --only 1,3`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN=${VENV_BIN:-.venv/bin}

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v taskset >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
    echo "bench: installing ${need_apt[*]} (apt-get)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The packages may start system services; the benchmark runs its own nginx and Redis on free ports.
fi

# Bench-only Python dependencies (plot, profiler); not part of the gateway's install.
if ! "$VENV_BIN/python" -c 'import matplotlib' 2>/dev/null || [ ! -x "$VENV_BIN/py-spy" ]; then
    echo "bench: installing the bench extra (matplotlib, py-spy) into the venv"
    "$VENV_BIN/pip" install -q -e '.[bench]'
fi

exec "$VENV_BIN/python" -m bench.run "$@"
