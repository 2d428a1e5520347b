# LSTM forecast service: gRPC on 50051, Prometheus /metrics on 9464.
#
# GPU image (the default: CUDA-enabled TensorFlow from pip; the host needs an NVIDIA driver and
# the NVIDIA Container Toolkit):
#   docker build -t lstm-forecast .
#   docker run --gpus all --read-only --tmpfs /tmp -v "$PWD/artifacts:/artifacts:ro" \
#       -p 50051:50051 -p 9464:9464 lstm-forecast
# CPU image (about 5 GB smaller: 2.1 GB against 7.1 GB on a Debian bookworm base):
#   docker build --build-arg TF_PACKAGE='tensorflow-cpu==2.21.*' -t lstm-forecast:cpu .
# Model baked in at build time (trains the default model on the build host's CPU, about a minute):
#   docker build --build-arg TRAIN_DEFAULT_MODEL=1 -t lstm-forecast:baked .
#
# Build arguments:
#   BASE_IMAGE           any Debian-like image with python3 (3.11+), the venv module, and
#                        ca-certificates; the official python:3.11-slim image and a plain
#                        `debootstrap --include=python3,python3-venv,ca-certificates bookworm`
#                        root filesystem both work (deploy/container-test.sh builds on the latter)
#   TF_PACKAGE           the TensorFlow distribution: tensorflow[and-cuda]==2.21.* (GPU),
#                        tensorflow-cpu==2.21.* or tensorflow==2.21.* (CPU); must stay inside
#                        the tensorflow range of pyproject.toml
#   TRAIN_DEFAULT_MODEL  1 = train the default model into /artifacts at build time
#   TRAIN_ARGS           extra `python -m training.train` flags for that build-time run
#
# Runtime contract:
#   - runs as uid/gid 10001, never root, and works with a read-only root filesystem: the only
#     writable path it needs is /tmp (HOME, TMPDIR and MPLCONFIGDIR point there), a declared
#     volume that `--tmpfs /tmp` or a Kubernetes emptyDir replaces;
#   - artifacts are read from /artifacts (FORECAST_ARTIFACTS): mount the artifacts base
#     directory there read-only, and the newest version in it is served;
#   - every `python -m service` flag has a FORECAST_<NAME> environment twin;
#   - on SIGTERM, health turns NOT_SERVING and in-flight RPCs get FORECAST_GRACE_SECONDS
#     (default 30) to finish: give the container a stop timeout a few seconds longer;
#   - the log says at start-up whether a GPU was found ("device: GPU (...)" / "device: CPU").

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# deps: a virtual environment holding TensorFlow and the other dependencies.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS deps
ARG TF_PACKAGE="tensorflow[and-cuda]==2.21.*"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DEFAULT_TIMEOUT=180 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that this slow layer (TensorFlow is hundreds
# of megabytes) is reused whenever only the code changes. TF_PACKAGE replaces the project's own
# `tensorflow` requirement, which lets a tensorflow-cpu image avoid pulling tensorflow as well.
# pip trusts the system CA bundle when there is one, so a build behind a TLS-inspecting proxy
# works by mounting the host's bundle over it.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
        export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; \
    fi; \
    python -c 'import re, tomllib; \
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
print("\n".join(d for d in deps if re.match(r"[A-Za-z0-9._-]+", d).group().lower() != "tensorflow"))' \
        > /tmp/requirements.txt; \
    pip install --upgrade pip "setuptools>=69" wheel; \
    pip install "${TF_PACKAGE}" -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt
# The project goes to /opt/app (next stage), which this .pth file puts on the venv's path. Kept
# apart from the venv, a code change leaves the large venv layers of the final image cached.
RUN python -c 'import sysconfig; \
open(sysconfig.get_paths()["purelib"] + "/lstm-forecast-app.pth", "w").write("/opt/app\n")'

# ---------------------------------------------------------------------------------------------
# builder: the project itself, without dependencies (all in place) and not editable: the final
# stage carries the installed packages only, never the source tree.
# ---------------------------------------------------------------------------------------------
FROM deps AS builder
COPY README.md ./
COPY monitoring ./monitoring
COPY training ./training
COPY service ./service
RUN pip install --no-deps --no-build-isolation --target /opt/app . \
    && python -m service --help >/dev/null \
    && python -m service.client --help >/dev/null

# ---------------------------------------------------------------------------------------------
# model: /artifacts, empty unless TRAIN_DEFAULT_MODEL=1 trains the default model into it.
# ---------------------------------------------------------------------------------------------
FROM builder AS model
ARG TRAIN_DEFAULT_MODEL=0
ARG TRAIN_ARGS=""
RUN mkdir -p /artifacts \
    && if [ "${TRAIN_DEFAULT_MODEL}" = "1" ]; then \
        python -m training.train --output /artifacts ${TRAIN_ARGS}; \
    fi

# ---------------------------------------------------------------------------------------------
# runtime: the base image, an unprivileged user, the venv, the project and the (optional) model.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="lstm-forecast-service" \
      org.opencontainers.image.description="LSTM forecasting over gRPC with collapse and drift monitoring" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --gid 10001 forecast \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init --home-dir /tmp \
        --shell /usr/sbin/nologin forecast

COPY --from=deps /opt/venv /opt/venv
COPY --from=builder /opt/app /opt/app
COPY --from=model /artifacts /artifacts

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    FORECAST_ARTIFACTS=/artifacts \
    FORECAST_ADDRESS=0.0.0.0:50051 \
    FORECAST_METRICS_PORT=9464

# The one writable path. With a read-only root filesystem, mount a tmpfs here
# (`--tmpfs /tmp`, or an emptyDir in Kubernetes).
VOLUME ["/tmp"]
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9464
STOPSIGNAL SIGTERM

# gRPC health (grpc.health.v1, the whole server): exit 0 only when SERVING. The port follows
# FORECAST_ADDRESS; a server started with TLS needs its own check (see the README).
# The start period covers loading plus the XLA compilation of every batch bucket.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD python -m service.client --target "127.0.0.1:${FORECAST_ADDRESS##*:}" --timeout 5 health \
        || exit 1

ENTRYPOINT ["python", "-m", "service"]
