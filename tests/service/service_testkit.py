"""Helpers shared by the service tests: real windows, certificates and a served subprocess.

Fixtures live in ``conftest.py``; this module holds the plain functions and classes they (and
a few tests) build on, so that test modules can import them by name.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service import announce
from service.config import ENV_PREFIX
from service.server import RunningServer, create_server
from training.data import impute, synthetic_series
from training.transform import sliding_windows

REPO_ROOT = Path(__file__).resolve().parents[2]

# Lines TensorFlow's C++ runtime writes to stderr on its own; not the service's output.
TF_NOISE_PREFIXES = ("I0000", "E0000", "W0000", "WARNING: All log messages")

# Finite as float32, but scaling pushes it past float32's range: the forecast is not finite.
EXTREME = 3e38


# -------------------------------------------------------------------------------------------
# Data
# -------------------------------------------------------------------------------------------


def synthetic_windows(window: int, count: int, *, steps: int = 1500) -> np.ndarray:
    """``count`` distinct raw windows ``[count, window, features]`` of the built-in series.

    Missing readings are filled by the training code's own causal imputation. The windows end
    at evenly spaced rows, so neighbouring windows give different forecasts.
    """
    values, _, _ = impute(synthetic_series(steps).values, (0, steps))
    ends = np.linspace(window - 1, steps - 1, count).astype(int)
    return sliding_windows(values, window, ends).astype(np.float32)


# -------------------------------------------------------------------------------------------
# In-process servers
# -------------------------------------------------------------------------------------------


async def start_server(settings, artifacts, **kwargs) -> RunningServer:
    """``create_server`` then warm-up: the server reports SERVING when this returns."""
    running = await create_server(settings, artifacts, **kwargs)
    await running.warm_up()
    return running


def target_of(running: RunningServer) -> str:
    return f"127.0.0.1:{running.port}"


# -------------------------------------------------------------------------------------------
# Certificates
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files of a throw-away CA, a server certificate (localhost, 127.0.0.1) and a client."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here


def make_pki(directory: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def certificate(subject, key, issuer, issuer_key, *, ca: bool, extensions=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, cert=None, key=None) -> Path:
        if cert is not None:
            path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        else:
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return path

    def new_key():
        return ec.generate_private_key(ec.SECP256R1())

    ca_key = new_key()
    ca_cert = certificate(name("test CA"), ca_key, name("test CA"), ca_key, ca=True)
    server_key = new_key()
    server_cert = certificate(
        name("localhost"),
        server_key,
        ca_cert.subject,
        ca_key,
        ca=False,
        extensions=(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ),
    )
    client_key = new_key()
    client_cert = certificate(
        name("test client"),
        client_key,
        ca_cert.subject,
        ca_key,
        ca=False,
        extensions=(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),),
    )
    other_key = new_key()
    other_ca = certificate(name("other CA"), other_key, name("other CA"), other_key, ca=True)
    return Pki(
        ca_cert=write(directory / "ca.pem", cert=ca_cert),
        server_cert=write(directory / "server.pem", cert=server_cert),
        server_key=write(directory / "server.key", key=server_key),
        client_cert=write(directory / "client.pem", cert=client_cert),
        client_key=write(directory / "client.key", key=client_key),
        other_ca_cert=write(directory / "other-ca.pem", cert=other_ca),
    )


# -------------------------------------------------------------------------------------------
# Subprocesses
# -------------------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The test process's environment without any ``FORECAST_*`` setting leaking in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def service_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines, without TensorFlow's own C++ log lines."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(TF_NOISE_PREFIXES)
    ]


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def client_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """``python -m service.client ARGS``, awaited: the event loop (and the in-process servers
    on it) keeps running meanwhile. ``env`` adds variables to :func:`clean_env`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.client",
        *args,
        cwd=REPO_ROOT,
        env={**clean_env(), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


class ServiceProcess:
    """``python -m service`` on an OS-chosen port, its stderr captured in a file.

    The port is read from the server's "gRPC listening on ... (port N" log line, so there is
    no probing for a free port.
    """

    def __init__(self, artifacts: Path, log_path: Path, *flags: str):
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--artifacts",
                str(artifacts),
                "--address",
                "127.0.0.1:0",
                "--metrics-port",
                "-1",
                *flags,
            ],
            cwd=REPO_ROOT,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        try:
            self.port = self._wait_for_port(timeout=120.0)
        except BaseException:
            self.close()
            raise
        self.target = f"127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = announce.grpc_port(self.stderr())
            if port:
                return port
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"service exited {self.process.returncode} before listening:\n"
                    + "\n".join(service_lines(self.stderr())[-20:])
                )
            time.sleep(0.05)
        raise TimeoutError(f"service did not log its port within {timeout}s")

    def wait_until_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                time.sleep(0.05)
        raise TimeoutError(f"service did not report SERVING within {timeout}s")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Make sure the process is gone (SIGKILL if it outlived its test) and the log closed."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
