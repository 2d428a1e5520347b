"""``python -m service`` as a child process of a test: the one way the tests start it.

* :func:`run_service` runs it to completion (start-up refusals: exit code and stderr).
* :class:`ServiceProcess` keeps it running on OS-chosen ports, its stderr in a log file. The
  ports are read back from the server's start-up lines (:mod:`service.announce`), so there is
  no probing for a free port.

Both run the interpreter of the test session from the repository root, with no ``FORECAST_*``
variable of the test's own environment leaking in. Test modules import this by name from
``tests/`` and ``tests/service/`` alike (pytest puts ``tests/`` on ``sys.path`` for
``tests/conftest.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from service import announce
from service.client import ForecastClient
from service.config import ENV_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]

# Lines TensorFlow's C++ runtime writes to stderr on its own; not the service's output.
TF_NOISE_PREFIXES = ("I0000", "E0000", "W0000", "WARNING: All log messages")

STARTUP_TIMEOUT_S = 120.0
LOOPBACK = "127.0.0.1"


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


def _command(artifacts: Path, flags: tuple[str, ...], *, address: str, metrics: bool) -> list[str]:
    metrics_flags = (
        ("--metrics-port", "0", "--metrics-address", LOOPBACK)
        if metrics
        else ("--metrics-port", "-1")
    )
    return [
        sys.executable,
        "-m",
        "service",
        "--artifacts",
        str(artifacts),
        "--address",
        address,
        *metrics_flags,
        "--workers",  # one process unless a test asks for more (the default is one per core)
        "1",
        *flags,  # last: a flag given here wins over the ones above
    ]


def run_service(
    artifacts: Path, *flags: str, address: str = f"{LOOPBACK}:0", timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the service until it exits (it only does by itself when it refuses to start)."""
    return subprocess.run(
        _command(artifacts, flags, address=address, metrics=False),
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServiceProcess:
    """The service on loopback with an OS-chosen gRPC port, its stderr in ``log_path``.

    Started at once; :meth:`wait_until_serving` (or :meth:`wait_listening`, for the ports
    only) blocks until it is usable. ``metrics=True`` serves ``/metrics`` on an OS-chosen port
    too (otherwise it is off). ``flags`` are further ``python -m service`` flags.

    Leaving the ``with`` block kills the process if it is still running; a test that wants the
    graceful drain calls :meth:`terminate` and waits on :attr:`process` itself.
    """

    def __init__(self, artifacts: Path, log_path: Path, *flags: str, metrics: bool = False):
        self.artifacts = artifacts
        self.log_path = log_path
        self.metrics = metrics
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._terminated = False
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            _command(artifacts, flags, address=f"{LOOPBACK}:0", metrics=metrics),
            cwd=REPO_ROOT,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC server."""
        if self.port is None:
            raise RuntimeError("the service's port is not known yet: call wait_listening()")
        return f"{LOOPBACK}:{self.port}"

    @property
    def metrics_target(self) -> str:
        """``host:port`` of ``/metrics`` (Prometheus's ``instance`` label of this process)."""
        if self.metrics_port is None:
            raise RuntimeError("no metrics port known: pass metrics=True, call wait_listening()")
        return f"{LOOPBACK}:{self.metrics_port}"

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _tail(self) -> str:
        return "\n".join(service_lines(self.stderr())[-20:])

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT_S) -> ServiceProcess:
        """Block until the gRPC port (and, with ``metrics``, the metrics port) is logged."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            self.port, self.metrics_port = announce.grpc_port(text), announce.metrics_port(text)
            if self.port is not None and (self.metrics_port is not None or not self.metrics):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"service exited {self.process.returncode} before listening:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"service did not log its ports within {timeout}s")
            time.sleep(0.05)

    def wait_until_serving(self, timeout: float = STARTUP_TIMEOUT_S) -> ServiceProcess:
        """Block until gRPC health reports SERVING (the model is warmed up)."""
        deadline = time.monotonic() + timeout
        self.wait_listening(timeout)
        status = "no answer"
        with ForecastClient(self.target, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"service exited {self.process.returncode} while warming up:\n"
                        + self._tail()
                    )
                try:
                    status = client.health()
                except grpc.RpcError as exc:
                    status = exc.code().name
                if status == "SERVING":
                    return self
                time.sleep(0.05)
        raise TimeoutError(f"service health {status} after {timeout}s:\n{self._tail()}")

    def terminate(self) -> None:
        """SIGTERM (once): the service turns NOT_SERVING, drains and exits."""
        if not self._terminated and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def close(self, grace: float = 0.0) -> None:
        """Make sure the process is gone and the log closed. With ``grace``, SIGTERM first and
        give the drain that long; SIGKILL whatever is left."""
        if grace > 0:
            self.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
