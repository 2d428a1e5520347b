"""Helpers shared by the service tests: real windows, in-process servers, certificates and the
client CLI.

Fixtures live in ``conftest.py``; this module holds the plain functions and classes they (and
a few tests) build on, so that test modules can import them by name. The service as a
subprocess is ``tests/service_process.py``, shared with the tests outside this directory.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from service_process import REPO_ROOT, clean_env

from service.server import RunningServer, create_server
from training.data import impute, synthetic_series
from training.transform import sliding_windows

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


async def read_stream(call) -> tuple[list, grpc.aio.AioRpcError | None]:
    """The responses a stream delivered, and the error it ended with (None when OK)."""
    responses = []
    try:
        async for response in call:
            responses.append(response)
    except grpc.aio.AioRpcError as error:
        return responses, error
    return responses, None


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
# The client CLI (the service itself as a subprocess: ``service_process``)
# -------------------------------------------------------------------------------------------


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
    return CliResult(await process.wait(), stdout.decode(), stderr.decode())


# -------------------------------------------------------------------------------------------
# Publishing versions into a watched base directory
# -------------------------------------------------------------------------------------------


def republish(source: Path, base: Path) -> Path:
    """Publish the files of version ``source`` under a new version name in ``base``, sealed
    like any published version: a stand-in for a retrained, healthy version."""
    from training.faults import copy_version

    return copy_version(source, base)


def flip_byte(path: Path) -> None:
    """Corrupt one byte in the middle of ``path`` (its sealed checksum no longer matches)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# -------------------------------------------------------------------------------------------
# Load from client threads
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic()
    ended: float
    code: grpc.StatusCode
    details: str
    answer: object = None  # the call's response, when OK


class Load:
    """``clients`` threads calling back to back until the ``with`` block ends, each through a
    ``make_client()`` of its own; ``call(client)`` makes one call. Every call is recorded."""

    def __init__(self, clients: int, make_client, call) -> None:
        self.calls: list[Call] = []
        self._make_client = make_client
        self._call = call
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with self._make_client() as client:
            while not self._stop.is_set():
                started = time.monotonic()
                answer = None
                try:
                    answer = self._call(client)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as error:
                    code, details = error.code(), error.details() or ""
                with self._lock:
                    self.calls.append(Call(started, time.monotonic(), code, details, answer))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def own_channel(target: str) -> grpc.Channel:
    """A channel with a connection of its own (channels in one process share them otherwise)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
