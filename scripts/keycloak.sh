#!/usr/bin/env bash
# Keycloak for Bearer Gateway tests and demos.
#
#   scripts/keycloak.sh install
#       Idempotent. Fetches org.keycloak:keycloak-quarkus-dist:26.7.3 (zip) with Maven if it is
#       not cached, unzips it once into $BG_CACHE/keycloak-26.7.3, runs `kc.sh build` (dev-file
#       H2, health endpoints, the JWT authorization grant and federated client authentication
#       features), then prepares two start-up accelerators inside <home>/.bg/:
#         seed/keycloakdb.mv.db  an H2 database with the schema and the master realm already
#                                created (admin/admin) - saves the Liquibase run on every start;
#         kc.aot                 a JDK 25+ AOT cache (JEP 483/514/515) from a training run.
#       Prints the Keycloak home as the last line of stdout.
#
#   scripts/keycloak.sh start HTTP_PORT MGMT_PORT DATA_DIR [REALM_FILE ...]
#       exec's Keycloak in the foreground on 127.0.0.1. DATA_DIR becomes this run's Keycloak
#       home (kc.home.dir): lib/conf/providers/themes are symlinks to the cached install, data/
#       is private (H2 database copied from the seed, transaction logs, import directory), so
#       parallel runs never share state. The realm files (default: deploy/keycloak/realm-camara.json)
#       are copied to DATA_DIR/data/import and imported at start; Keycloak itself resolves
#       ${GATEWAY_ISSUER:...} and ${GATEWAY_JWKS_URL:...} from the environment.
#       Health/readiness: http://127.0.0.1:MGMT_PORT/health/ready ; admin user admin/admin.
#
#   scripts/keycloak.sh home      print the Keycloak home (after install)
#
# Environment:
#   BG_CACHE            cache root (default $HOME/.cache/bearer-gateway)
#   BG_JAVA_HOME        force a JDK (default: newest JDK >= 17 under /usr/lib/jvm, else JAVA_HOME, else PATH)
#   BG_KC_HEAP          JVM heap options (default "-Xms64m -Xmx512m")
#   BG_KC_JAVA_OPTS     extra JVM options appended (e.g. -XX:TieredStopAtLevel=1 for faster, C1-only starts)
#   BG_KC_NO_AOT=1      do not create/use the AOT cache
#   BG_KC_HOSTNAME      value for --hostname (default http://127.0.0.1:HTTP_PORT, so the realm
#                       issuer is always http://127.0.0.1:HTTP_PORT/realms/camara)
#   BG_KC_LOG_LEVEL     Keycloak log level (default info)
#   GATEWAY_ISSUER, GATEWAY_JWKS_URL   used by realm-camara.json (defaults http://127.0.0.1:8080 and
#                       http://127.0.0.1:8080/.well-known/jwks.json)
#
# The admin credentials admin/admin and the realm's client secret are throwaway test values.
set -euo pipefail

KC_VERSION=26.7.3
KC_ARTIFACT="org.keycloak:keycloak-quarkus-dist:${KC_VERSION}:zip"
BG_CACHE="${BG_CACHE:-$HOME/.cache/bearer-gateway}"
KC_HOME="$BG_CACHE/keycloak-$KC_VERSION"
KC_ZIP="$BG_CACHE/dl/keycloak-quarkus-dist-$KC_VERSION.zip"
BG_DIR="$KC_HOME/.bg"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
DEFAULT_REALM="$REPO_DIR/deploy/keycloak/realm-camara.json"
# Build-time options. Both features are enabled by default in 26.7.3; naming them keeps the
# build explicit (and fails loudly if a later version renames them).
BUILD_OPTS=(--db=dev-file --health-enabled=true --features=jwt-authorization-grant,client-auth-federated)
ADMIN_USER=admin
ADMIN_PASSWORD=admin

log() { echo "keycloak.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

java_major() { # $1 = JDK home -> major version or empty
    local rel="$1/release" v=""
    [ -x "$1/bin/java" ] || return 0
    if [ -f "$rel" ]; then
        v=$(sed -n 's/^JAVA_VERSION="\([0-9][0-9]*\).*/\1/p' "$rel" | head -1)
    fi
    if [ -z "$v" ]; then
        v=$("$1/bin/java" -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -1)
    fi
    echo "$v"
}

pick_java() {
    if [ -n "${BG_JAVA_HOME:-}" ]; then
        [ -x "$BG_JAVA_HOME/bin/java" ] || die "BG_JAVA_HOME=$BG_JAVA_HOME has no bin/java"
        JAVA_HOME="$BG_JAVA_HOME"
    else
        local best="" best_v=0 d v
        for d in /usr/lib/jvm/*/; do
            d="${d%/}"
            [ -L "$d" ] && continue
            v=$(java_major "$d")
            [ -n "$v" ] || continue
            if [ "$v" -gt "$best_v" ]; then best="$d"; best_v="$v"; fi
        done
        if [ -n "$best" ]; then
            JAVA_HOME="$best"
        elif [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
            :
        elif command -v java >/dev/null 2>&1; then
            JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")"
        else
            die "no Java found: install a JDK 17+ (21 or 25 preferred)"
        fi
    fi
    JAVA_MAJOR=$(java_major "$JAVA_HOME")
    [ -n "$JAVA_MAJOR" ] && [ "$JAVA_MAJOR" -ge 17 ] || die "Java 17+ required, found '$JAVA_MAJOR' at $JAVA_HOME"
    export JAVA_HOME JAVA_MAJOR
}

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

use_aot() { [ -z "${BG_KC_NO_AOT:-}" ] && [ "$JAVA_MAJOR" -ge 25 ]; }

stamp() {
    local rt=""
    [ -f "$JAVA_HOME/release" ] && rt=$(sed -n 's/^JAVA_RUNTIME_VERSION="\(.*\)"/\1/p' "$JAVA_HOME/release" | head -1)
    echo "keycloak=$KC_VERSION java=$JAVA_HOME runtime=${rt:-$JAVA_MAJOR} build=${BUILD_OPTS[*]}"
}
installed() { [ -f "$BG_DIR/installed" ] && [ "$(cat "$BG_DIR/installed")" = "$(stamp)" ]; }

# A run home: everything read-only is a symlink to the cached install, data/ is private.
prepare_run_home() { # $1 = dir
    local run="$1" d
    mkdir -p "$run/data/import" "$run/data/h2"
    for d in lib conf providers themes; do
        if [ ! -e "$run/$d" ]; then ln -s "$KC_HOME/$d" "$run/$d"; fi
    done
    if [ -f "$BG_DIR/seed/keycloakdb.mv.db" ] && [ ! -f "$run/data/h2/keycloakdb.mv.db" ]; then
        cp "$BG_DIR/seed/keycloakdb.mv.db" "$run/data/h2/keycloakdb.mv.db"
    fi
}

# Start Keycloak from the cached home with kc.home.dir=$run (in the background), echo its pid.
launch() { # $1 run dir, $2 http port, $3 mgmt port, $4 log file, rest: extra args
    local run="$1" http="$2" mgmt="$3" logf="$4"
    shift 4
    (
        export KC_BOOTSTRAP_ADMIN_USERNAME="$ADMIN_USER" KC_BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD"
        export JAVA_OPTS_KC_HEAP="${BG_KC_HEAP:--Xms64m -Xmx512m}"
        exec setsid "$KC_HOME/bin/kc.sh" start --optimized "-Dkc.home.dir=$run" \
            --http-enabled=true --http-host=127.0.0.1 --http-port="$http" \
            --http-management-port="$mgmt" --hostname="http://127.0.0.1:$http" \
            --cache=local "$@" >"$logf" 2>&1 </dev/null
    ) &
    echo $!
}

wait_ready() { # $1 pid, $2 mgmt port, $3 timeout s
    local pid="$1" mgmt="$2" deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        if curl -sf "http://127.0.0.1:$mgmt/health/ready" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

stop_group() { # $1 pid (a session leader started with setsid)
    kill -TERM -- "-$1" 2>/dev/null || true
    local i
    for i in $(seq 1 120); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL -- "-$1" 2>/dev/null || true
}

do_install() {
    pick_java
    if installed; then
        echo "$KC_HOME"
        return 0
    fi
    mkdir -p "$BG_CACHE/dl"
    # One installer at a time; the lock is released when this (sub)shell exits, so a Keycloak
    # exec'd later by `start` never holds it.
    (
        flock 9
        installed || do_install_locked
    ) 9>"$BG_CACHE/.keycloak-install.lock"
    installed || die "install did not complete"
    echo "$KC_HOME"
}

do_install_locked() {
    local want; want="$(stamp)"
    local t0=$SECONDS
    if [ ! -f "$KC_HOME/bin/kc.sh" ]; then
        if [ ! -f "$KC_ZIP" ]; then
            command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch $KC_ARTIFACT"
            log "fetching $KC_ARTIFACT with Maven"
            mvn -q dependency:copy -Dartifact="$KC_ARTIFACT" -DoutputDirectory="$BG_CACHE/dl" >&2
        fi
        [ -f "$KC_ZIP" ] || die "missing $KC_ZIP after mvn dependency:copy"
        log "unzipping $KC_ZIP"
        local tmp; tmp="$(mktemp -d "$BG_CACHE/.unzip.XXXXXX")"
        unzip -q "$KC_ZIP" -d "$tmp"
        rm -rf "$KC_HOME"
        mv "$tmp/keycloak-$KC_VERSION" "$KC_HOME"
        rmdir "$tmp"
    fi
    rm -rf "$BG_DIR"
    mkdir -p "$BG_DIR"
    log "kc.sh build ${BUILD_OPTS[*]} (JAVA_HOME=$JAVA_HOME)"
    "$KC_HOME/bin/kc.sh" build "${BUILD_OPTS[@]}" >"$BG_DIR/build.log" 2>&1 || { cat "$BG_DIR/build.log" >&2; die "kc.sh build failed"; }

    # Seed database: first start creates the schema and the master realm with admin/admin.
    local run pid http mgmt
    run="$(mktemp -d "$BG_CACHE/.seed.XXXXXX")"
    prepare_run_home "$run"
    http=$(free_port); mgmt=$(free_port)
    log "creating the seed database (first start, ports $http/$mgmt)"
    pid=$(launch "$run" "$http" "$mgmt" "$BG_DIR/seed.log")
    if ! wait_ready "$pid" "$mgmt" 600; then
        stop_group "$pid"; tail -50 "$BG_DIR/seed.log" >&2; die "seed start failed"
    fi
    stop_group "$pid"
    mkdir -p "$BG_DIR/seed"
    cp "$run/data/h2/keycloakdb.mv.db" "$BG_DIR/seed/keycloakdb.mv.db"
    rm -rf "$run"

    # AOT cache (JDK 25+): a training run that imports the realm and serves a few requests.
    if use_aot; then
        run="$(mktemp -d "$BG_CACHE/.train.XXXXXX")"
        prepare_run_home "$run"
        cp "$DEFAULT_REALM" "$run/data/import/"
        http=$(free_port); mgmt=$(free_port)
        log "training run for the AOT cache (ports $http/$mgmt)"
        pid=$(BG_KC_JAVA_OPTS="" JAVA_OPTS_APPEND="-XX:AOTCacheOutput=$BG_DIR/kc.aot.tmp -Xlog:aot=error" \
              launch "$run" "$http" "$mgmt" "$BG_DIR/train.log" --import-realm)
        if wait_ready "$pid" "$mgmt" 600; then
            local base="http://127.0.0.1:$http"
            curl -sf "$base/realms/camara" >/dev/null || true
            curl -sf "$base/realms/camara/.well-known/openid-configuration" >/dev/null || true
            local tok
            tok=$(curl -sf -d grant_type=password -d client_id=admin-cli -d "username=$ADMIN_USER" \
                  -d "password=$ADMIN_PASSWORD" "$base/realms/master/protocol/openid-connect/token" \
                  | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p') || true
            [ -n "$tok" ] && curl -sf -H "Authorization: Bearer $tok" "$base/admin/realms/camara/events?max=10" >/dev/null || true
            curl -s -u "camara-app-secret:wrong" -d grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer \
                 -d assertion=x.y.z "$base/realms/camara/protocol/openid-connect/token" >/dev/null || true
            curl -s -u "camara-app-secret:camara-app-secret-TEST-ONLY-not-a-real-secret" \
                 -d grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer \
                 -d assertion=eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln "$base/realms/camara/protocol/openid-connect/token" >/dev/null || true
        fi
        stop_group "$pid"
        if [ -s "$BG_DIR/kc.aot.tmp" ]; then
            mv "$BG_DIR/kc.aot.tmp" "$BG_DIR/kc.aot"
        else
            log "warning: no AOT cache produced (see $BG_DIR/train.log); starts will be slower"
            rm -f "$BG_DIR/kc.aot.tmp"
        fi
        rm -rf "$run"
    fi
    echo "$want" >"$BG_DIR/installed"
    log "installed in $((SECONDS - t0)) s"
}

do_start() {
    [ $# -ge 3 ] || die "usage: keycloak.sh start HTTP_PORT MGMT_PORT DATA_DIR [REALM_FILE ...]"
    local http="$1" mgmt="$2" run="$3"
    shift 3
    pick_java
    installed || do_install >/dev/null
    mkdir -p "$run"
    run="$(cd "$run" && pwd)"
    prepare_run_home "$run"
    local f
    if [ $# -eq 0 ]; then set -- "$DEFAULT_REALM"; fi
    for f in "$@"; do
        [ -f "$f" ] || die "realm file not found: $f"
        cp "$f" "$run/data/import/"
    done
    local opts="${BG_KC_JAVA_OPTS:-}"
    if use_aot && [ -f "$BG_DIR/kc.aot" ]; then
        # -Xlog:aot=error: a stale cache (other JDK build) is ignored silently, not fatal.
        opts="-XX:AOTCache=$BG_DIR/kc.aot -Xlog:aot=error -Xlog:cds=error $opts"
    fi
    export JAVA_OPTS_APPEND="${JAVA_OPTS_APPEND:+$JAVA_OPTS_APPEND }$opts"
    export JAVA_OPTS_KC_HEAP="${BG_KC_HEAP:--Xms64m -Xmx512m}"
    export KC_BOOTSTRAP_ADMIN_USERNAME="$ADMIN_USER" KC_BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD"
    export GATEWAY_ISSUER="${GATEWAY_ISSUER:-http://127.0.0.1:8080}"
    export GATEWAY_JWKS_URL="${GATEWAY_JWKS_URL:-$GATEWAY_ISSUER/.well-known/jwks.json}"
    log "starting Keycloak $KC_VERSION on http://127.0.0.1:$http (management $mgmt), home $run," \
        "GATEWAY_ISSUER=$GATEWAY_ISSUER GATEWAY_JWKS_URL=$GATEWAY_JWKS_URL"
    exec "$KC_HOME/bin/kc.sh" start --optimized "-Dkc.home.dir=$run" \
        --http-enabled=true --http-host=127.0.0.1 --http-port="$http" \
        --http-management-port="$mgmt" --hostname="${BG_KC_HOSTNAME:-http://127.0.0.1:$http}" \
        --cache=local --import-realm --log-level="${BG_KC_LOG_LEVEL:-info}"
}

case "${1:-}" in
    install) do_install ;;
    start) shift; do_start "$@" ;;
    home) echo "$KC_HOME" ;;
    *) echo "usage: $0 install | start HTTP_PORT MGMT_PORT DATA_DIR [REALM_FILE ...] | home" >&2; exit 2 ;;
esac
