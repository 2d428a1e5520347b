#!/usr/bin/env bash
# Build the service image with podman and exercise the running container end to end:
#
#   1. build the image (CPU TensorFlow) on a local Debian bookworm base made by debootstrap
#   2. run it read-only, as its own user, with a freshly trained tiny model mounted at /artifacts
#   3. check that the server process is not root
#   4. wait for gRPC health SERVING (and run the image's own HEALTHCHECK)
#   5. send a forecast with the project's client
#   6. scrape /metrics
#   7. send SIGTERM and check a clean exit (code 0) within the grace period
#
#   sudo deploy/container-test.sh       # as root; .ci/run calls it after `make test`
#
# No container registry is reachable here, so nothing is pulled: the base image is debootstrapped
# once and kept in podman's image store (the root filesystem is cached in FORECAST_CI_CACHE as
# well), and podman's layer cache keeps the TensorFlow layer while only the code changes.
# Warm, a run takes under a minute on 2 cores; cold, about 3.5 minutes (the debootstrap and the
# download of TensorFlow and the other wheels).
#
# Settings (environment):
#   FORECAST_CI_CACHE     cache directory for the base root filesystem (/var/cache/forecast-ci)
#   FORECAST_TEST_IMAGE   tag of the image built and tested (localhost/lstm-forecast:ci)
#   TF_PACKAGE            TensorFlow distribution installed in the image (tensorflow-cpu==2.21.*)
#   DEBIAN_MIRROR         mirror debootstrap uses (http://deb.debian.org/debian)
#   GRACE_SECONDS         the server's drain period under test (10)
#
# The podman settings below were each needed on this kind of machine: a containers.conf with
# empty default ulimits (setrlimit is refused), the runc runtime (crun fails on hybrid cgroups),
# host networking for build and run, and the host's CA bundle mounted into the build (package
# index traffic passes through a TLS-inspecting proxy).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --non-interactive --preserve-env "$0" "$@"
    fi
    echo "container-test: error: run as root (rootful podman, debootstrap)" >&2
    exit 2
fi

CACHE_DIR="${FORECAST_CI_CACHE:-/var/cache/forecast-ci}"
IMAGE="${FORECAST_TEST_IMAGE:-localhost/lstm-forecast:ci}"
BASE_IMAGE="localhost/base:bookworm"
TF_PACKAGE="${TF_PACKAGE:-tensorflow-cpu==2.21.*}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
GRACE_SECONDS="${GRACE_SECONDS:-10}"
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
PYTHON="$REPO/.venv/bin/python"
NAME="forecast-ci-$$"

export CONTAINERS_CONF="$REPO/deploy/containers.conf"
export PYTHONDONTWRITEBYTECODE=1

START=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - START))" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf '\nFAIL: %s\n' "$*" >&2
    if podman container exists "$NAME" 2>/dev/null; then
        printf -- '--- container log (last 40 lines) ---\n' >&2
        podman logs --tail 40 "$NAME" >&2 || true
    fi
    exit 1
}
podman() { command podman --runtime runc "$@"; }

WORK="$(mktemp -d /tmp/forecast-container-test.XXXXXX)"
cleanup() {
    podman rm --force --time 0 "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "0/7 tools: podman, runc, debootstrap; the project's .venv"
"$REPO/scripts/install-container-tools.sh"
podman --version
if [ ! -x "$PYTHON" ]; then
    make -C "$REPO" install
fi

# ---------------------------------------------------------------------------------------------
step "base image $BASE_IMAGE (debootstrapped Debian bookworm, cached)"
if podman image exists "$BASE_IMAGE"; then
    ok "already in podman's image store"
else
    ROOTFS="$CACHE_DIR/rootfs-bookworm"
    if [ ! -f "$ROOTFS/.complete" ]; then
        echo "    debootstrap --variant=minbase bookworm (about a minute)"
        rm -rf "$ROOTFS" "$ROOTFS.partial"
        mkdir -p "$CACHE_DIR"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$ROOTFS.partial" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
        # apt's package cache is not needed in the image.
        rm -rf "$ROOTFS.partial"/var/cache/apt/archives/*.deb "$ROOTFS.partial"/var/lib/apt/lists/*
        touch "$ROOTFS.partial/.complete"
        mv "$ROOTFS.partial" "$ROOTFS"
    fi
    tar --exclude=./.complete -C "$ROOTFS" -c . | podman import - "$BASE_IMAGE" >/dev/null
    ok "imported from $ROOTFS"
fi
podman run --rm --network host "$BASE_IMAGE" python3 --version

# ---------------------------------------------------------------------------------------------
step "1/7 build $IMAGE (BASE_IMAGE=$BASE_IMAGE, TF_PACKAGE=$TF_PACKAGE)"
OLD_IMAGE_ID="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
# --format docker keeps HEALTHCHECK, which the OCI image format has no field for.
podman build \
    --network host \
    --format docker \
    --layers \
    -v "$HOST_CA_BUNDLE:$HOST_CA_BUNDLE:ro" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg TF_PACKAGE="$TF_PACKAGE" \
    --tag "$IMAGE" \
    --file Dockerfile \
    . 2>&1 | grep -vE '^(Collecting|  Downloading|  Using cached|Requirement already satisfied| +━)' \
    || fail "podman build failed"
NEW_IMAGE_ID="$(podman image inspect --format '{{.Id}}' "$IMAGE")"
if [ -n "$OLD_IMAGE_ID" ] && [ "$OLD_IMAGE_ID" != "$NEW_IMAGE_ID" ]; then
    # The image this tag pointed at before; its cached layers stay for the next build.
    podman rmi "$OLD_IMAGE_ID" >/dev/null 2>&1 || true
fi
ok "$(podman image inspect --format '{{.Id}} {{.Size}} bytes, user {{.Config.User}}' "$IMAGE")"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] \
    || fail "the image's USER is not 10001:10001"
podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE" | grep -q 'service.client' \
    || fail "the image has no HEALTHCHECK using service.client"

# ---------------------------------------------------------------------------------------------
step "2/7 train a tiny model on the host and run the container with it"
"$PYTHON" -m training.train --synthetic-steps 1500 --window 24 --units 16 --epochs 4 \
    --allow-collapsed --output "$WORK/artifacts" >"$WORK/train.log" 2>&1 \
    || { tail -n 20 "$WORK/train.log" >&2; fail "training the tiny model failed"; }
chmod -R a+rX "$WORK/artifacts"
VERSION="$(find "$WORK/artifacts" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' \
    | sort | tail -n 1)"
[ -n "$VERSION" ] || fail "training published no version"
ok "trained version $VERSION"

# Host networking: pick two free loopback ports (a small race with other processes is accepted
# here; the server itself fails loudly if a port is taken).
read -r GRPC_PORT METRICS_PORT < <("$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
# --no-healthcheck: podman would schedule the image's HEALTHCHECK with systemd timers, and there
# is no systemd here; step 4 runs that same command inside the container instead.
podman run --detach --name "$NAME" \
    --network host \
    --no-healthcheck \
    --read-only --tmpfs /tmp:rw,size=256m,mode=1777 \
    --volume "$WORK/artifacts:/artifacts:ro" \
    --env FORECAST_ADDRESS="127.0.0.1:$GRPC_PORT" \
    --env FORECAST_METRICS_ADDRESS=127.0.0.1 \
    --env FORECAST_METRICS_PORT="$METRICS_PORT" \
    --env FORECAST_GRACE_SECONDS="$GRACE_SECONDS" \
    --env FORECAST_WORKERS=2 \
    "$IMAGE" >/dev/null
ok "container $NAME: gRPC 127.0.0.1:$GRPC_PORT, metrics 127.0.0.1:$METRICS_PORT"

# ---------------------------------------------------------------------------------------------
step "3/7 the server process is not root, and the root filesystem is read-only"
SERVER_UID="$(podman exec "$NAME" sh -c "awk '/^Uid:/ {print \$2}' /proc/1/status")"
if [ -z "$SERVER_UID" ] || [ "$SERVER_UID" = 0 ]; then
    fail "the server runs as uid '$SERVER_UID'"
fi
ok "server process (pid 1) runs as uid $SERVER_UID"
if podman exec --user 0 "$NAME" touch /opt/venv/probe 2>/dev/null; then
    fail "the root filesystem is writable"
fi
ok "even root cannot write to /opt/venv"

# ---------------------------------------------------------------------------------------------
step "4/7 wait for gRPC health SERVING"
deadline=$((SECONDS + 240))
until status="$("$PYTHON" -m service.client --target "127.0.0.1:$GRPC_PORT" --timeout 2 \
        health 2>/dev/null)"; do
    [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] \
        || fail "the container exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || fail "not SERVING after 240 s (last: ${status:-no answer})"
    sleep 1
done
ok "health: $status"
podman logs "$NAME" 2>&1 | grep -E 'device: (GPU|CPU)' >"$WORK/device.log" \
    || fail "the log does not say whether a GPU was found"
ok "start-up log: $(sed -E 's/.*(device: )/\1/' "$WORK/device.log")"
# The image's own HEALTHCHECK command, run inside the container as the runtime would.
podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" >"$WORK/healthcheck.json"
mapfile -t HEALTH_CMD < <("$PYTHON" -c '
import json, sys
test = json.load(open(sys.argv[1]))
print(*(["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]), sep="\n")
' "$WORK/healthcheck.json")
podman exec "$NAME" "${HEALTH_CMD[@]}" >/dev/null || fail "the image's HEALTHCHECK reports unhealthy"
ok "the image's HEALTHCHECK command passes"


# ---------------------------------------------------------------------------------------------
step "5/7 forecast with the project's client"
"$PYTHON" - "$WORK/artifacts/$VERSION/manifest.json" "$WORK/window.json" <<'EOF'
import json
import sys

from training.data import synthetic_series

manifest = json.load(open(sys.argv[1]))
series = synthetic_series(1500, missing=0.0)
columns = [series.feature_names.index(name) for name in manifest["feature_names"]]
window = series.values[-manifest["window"]:, columns]
json.dump({"windows": [window.tolist()]}, open(sys.argv[2], "w"))
EOF
"$PYTHON" -m service.client --target "127.0.0.1:$GRPC_PORT" forecast --json "$WORK/window.json" \
    >"$WORK/forecast.json" || fail "the forecast RPC failed"
"$PYTHON" - "$WORK/forecast.json" "$VERSION" <<'EOF' || fail "unexpected forecast response"
import json
import math
import sys

body = json.load(open(sys.argv[1]))
assert body["model_version"] == sys.argv[2], body
assert len(body["forecasts"]) == 1 and body["forecasts"][0], body
assert all(math.isfinite(v) for v in body["forecasts"][0]), body
print(f"    ok: {body['target']} forecast {body['forecasts'][0]} from version {sys.argv[2]}")
EOF

# ---------------------------------------------------------------------------------------------
step "6/7 scrape /metrics"
curl --fail --silent --show-error --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" \
    >"$WORK/metrics.txt" || fail "GET /metrics failed"
windows="$(awk '$1 == "forecast_windows_total" {print $2}' "$WORK/metrics.txt")"
if ! awk -v v="${windows:-0}" 'BEGIN {exit !(v >= 1)}'; then
    fail "forecast_windows_total is '${windows:-missing}', expected >= 1"
fi
ok "forecast_windows_total $windows"
warm="$(awk '$1 == "forecast_workers{state=\"warm\"}" {print $2}' "$WORK/metrics.txt")"
[ "${warm:-0}" = "2.0" ] || fail "forecast_workers{state=\"warm\"} is '${warm:-missing}', expected 2"
ok "2 serving workers behind pid 1, both warm"
grep -E '^forecast_model_info\{' "$WORK/metrics.txt" | sed 's/^/    /'

# ---------------------------------------------------------------------------------------------
step "7/7 SIGTERM: clean exit within the ${GRACE_SECONDS}s grace period"
t0=$SECONDS
podman kill --signal TERM "$NAME" >/dev/null
exit_code="$(timeout "$((GRACE_SECONDS + 15))" podman --runtime runc wait "$NAME")" \
    || fail "still running $((GRACE_SECONDS + 15)) s after SIGTERM"
took=$((SECONDS - t0))
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM, expected 0"
[ "$took" -le "$((GRACE_SECONDS + 5))" ] || fail "took ${took}s to exit (grace ${GRACE_SECONDS}s)"
# Read the whole log first: with pipefail, `grep -q` closing the pipe early fails podman logs.
podman logs "$NAME" >"$WORK/final.log" 2>&1
grep -q 'drained; exiting' "$WORK/final.log" || fail "no 'drained; exiting' in the log"
ok "exit code 0 after ${took}s"
printf -- '    --- container log ---\n'
podman logs "$NAME" 2>&1 | sed 's/^/    /'

printf '\nall 7 steps passed in %ds\n' "$((SECONDS - START))"
# The closing line in the plain 'N passed, N failed' form that CI summaries read.
echo "container-test: 7 passed, 0 failed"
