#!/usr/bin/env bash
# Install the system tools some tests need: Prometheus's server and promtool (Debian's
# `prometheus` package) and amtool (`prometheus-alertmanager`, checks the Alertmanager config).
# Idempotent: does nothing when all three are already on PATH. (kubectl, for the kustomize
# render tests, ships with this project's machine image.)
#
#   sudo scripts/install-system-deps.sh     # or as root, e.g. in CI
#
# Without them the alert-rule and real-Prometheus tests skip; with
# FORECAST_REQUIRE_SYSTEM_TOOLS=1 (as .ci/run sets) they fail instead.
set -euo pipefail

TOOLS=(promtool prometheus amtool)
missing=0
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing=1
done
if [ "$missing" -eq 0 ]; then
    echo "install-system-deps: ${TOOLS[*]} already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --non-interactive bash "$0" "$@"
    fi
    echo "install-system-deps: error: run as root (apt-get install needs it)" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager

for tool in "${TOOLS[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-system-deps: error: $tool still not on PATH after installing prometheus and prometheus-alertmanager" >&2
        exit 1
    fi
done
# Where an init system runs, the package also starts a system-wide Prometheus on :9090; the
# tests start their own on a free loopback port and neither need nor use it.
echo "install-system-deps: installed $(prometheus --version 2>&1 | head -n 1)"
