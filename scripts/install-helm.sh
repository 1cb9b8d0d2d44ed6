#!/usr/bin/env bash
# Builds helm from the Go module proxy (go install) into the cache outside the clone, once per
# version, and prints the binary's path. Used by .ci/run and by tests/integration/test_helm_chart.py.
set -euo pipefail
HELM_VERSION=${HELM_VERSION:-v3.22.0}
BIN=${BEARER_GATEWAY_CACHE:-$HOME/.cache/bearer-gateway}/bin
helm=$BIN/helm
if [[ -x $helm && "$(cat "$BIN/helm.version" 2>/dev/null)" == "$HELM_VERSION" ]]; then
    echo "$helm"
    exit 0
fi
if ! command -v go >/dev/null; then
    if [[ -x /usr/local/go/bin/go ]]; then
        PATH=/usr/local/go/bin:$PATH
    else
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
    fi
fi
mkdir -p "$BIN"
echo "building helm $HELM_VERSION with $(go version)" >&2
GOBIN=$BIN GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
echo "$HELM_VERSION" > "$BIN/helm.version"
echo "$helm"
