#!/usr/bin/env bash
# Ory Hydra for Bearer Gateway tests and demos.
#
#   scripts/hydra.sh install
#       Idempotent. Builds Ory Hydra v2.3.0 once with the Go toolchain (through the Go module
#       proxy) into $BG_CACHE/hydra-2.3.0/bin/hydra and prints that path as the last line of
#       stdout. `go install github.com/ory/hydra/v2@v2.3.0` is refused because Hydra's go.mod
#       has replace directives, so the build uses a scratch module:
#         go mod init; go mod edit -replace <Hydra's own pop replace>; go get -tool hydra@v2.3.0;
#         go build -tags sqlite,sqlite_omit_load_extension
#       (the sqlite tag is what makes DSN=memory work). One build at a time: parallel callers
#       wait on a lock and then find the binary. The build log and its duration are kept in
#       $BG_CACHE/hydra-2.3.0/build.log and build.seconds.
#
#   scripts/hydra.sh path     print the binary path (after install)
#
# Environment:
#   BG_CACHE      cache root (default $HOME/.cache/bearer-gateway)
#   GOCACHE, GOMODCACHE, GOPROXY, GOFLAGS are honoured as usual by `go`.
set -euo pipefail

HYDRA_VERSION=v2.3.0
HYDRA_MODULE=github.com/ory/hydra/v2
# Copied from Hydra v2.3.0's own go.mod: its sqlite/memory persister needs Ory's fork of pop.
POP_REPLACE="github.com/gobuffalo/pop/v6=github.com/ory/pop/v6@v6.2.1-0.20241121111754-e5dfc0f3344b"
BUILD_TAGS=sqlite,sqlite_omit_load_extension
BG_CACHE="${BG_CACHE:-$HOME/.cache/bearer-gateway}"
HYDRA_HOME="$BG_CACHE/hydra-${HYDRA_VERSION#v}"
HYDRA_BIN="$HYDRA_HOME/bin/hydra"

log() { echo "hydra.sh: $*" >&2; }
# `go get -tool` needs Go 1.24+. An older go (e.g. Debian's golang-go) fetches the approved newer
# toolchain through the Go module proxy when GOTOOLCHAIN names it (not exercised here: Go 1.26 was installed).
go_minor() { go env GOVERSION | sed -n 's/^go1\.\([0-9][0-9]*\).*/\1/p'; }
die() { log "error: $*"; exit 1; }

stamp() { echo "hydra=$HYDRA_VERSION tags=$BUILD_TAGS pop=$POP_REPLACE go=$(go env GOVERSION)"; }
installed() { [ -x "$HYDRA_BIN" ] && [ -f "$HYDRA_HOME/installed" ] && [ "$(cat "$HYDRA_HOME/installed")" = "$(stamp)" ]; }

build_locked() {
    local t0=$SECONDS scratch
    mkdir -p "$HYDRA_HOME/bin"
    scratch="$(mktemp -d "$BG_CACHE/.hydra-build.XXXXXX")"
    log "building $HYDRA_MODULE@$HYDRA_VERSION in $scratch (log: $HYDRA_HOME/build.log)"
    if ! (
        cd "$scratch"
        export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=1
        set -x
        go mod init bearer-gateway.invalid/hydra-build
        go mod edit -replace "$POP_REPLACE"
        go get -tool "$HYDRA_MODULE@$HYDRA_VERSION"
        go build -trimpath -tags "$BUILD_TAGS" \
            -ldflags "-s -w -X $HYDRA_MODULE/driver/config.Version=$HYDRA_VERSION" \
            -o "$HYDRA_BIN.tmp" "$HYDRA_MODULE"
    ) >"$HYDRA_HOME/build.log" 2>&1; then
        tail -40 "$HYDRA_HOME/build.log" >&2
        rm -rf "$scratch" "$HYDRA_BIN.tmp"
        die "go build of Hydra failed"
    fi
    rm -rf "$scratch"
    "$HYDRA_BIN.tmp" version >>"$HYDRA_HOME/build.log" 2>&1 || die "built binary does not run"
    mv "$HYDRA_BIN.tmp" "$HYDRA_BIN"
    echo $((SECONDS - t0)) >"$HYDRA_HOME/build.seconds"
    stamp >"$HYDRA_HOME/installed"
    log "built in $((SECONDS - t0)) s"
}

do_install() {
    command -v go >/dev/null 2>&1 || die "the Go toolchain (go) is needed to build Hydra"
    if [ -z "${GOTOOLCHAIN:-}" ] && [ "$(go_minor)" -lt 24 ] 2>/dev/null; then export GOTOOLCHAIN=go1.27.3; fi
    if ! installed; then
        mkdir -p "$BG_CACHE"
        (
            flock 9
            installed || build_locked
        ) 9>"$BG_CACHE/.hydra-install.lock"
        installed || die "install did not complete"
    fi
    echo "$HYDRA_BIN"
}

case "${1:-}" in
    install) do_install ;;
    path) echo "$HYDRA_BIN" ;;
    *) echo "usage: $0 install | path" >&2; exit 2 ;;
esac
