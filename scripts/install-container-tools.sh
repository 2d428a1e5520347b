#!/usr/bin/env bash
# Install the tools deploy/container-test.sh needs: podman (builds and runs the image without a
# Docker engine), runc (its OCI runtime here: crun fails on hybrid cgroups) and debootstrap
# (makes the local Debian base image, since no container registry is reachable).
# Idempotent: does nothing when all three are already on PATH.
#
#   sudo scripts/install-container-tools.sh     # or as root, e.g. in CI
set -euo pipefail

missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-container-tools: podman, runc and debootstrap already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --non-interactive "$0" "$@"
    fi
    echo "install-container-tools: error: run as root (apt-get install needs it)" >&2
    exit 2
fi

echo "install-container-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q podman runc debootstrap
echo "install-container-tools: installed $(podman --version)"
