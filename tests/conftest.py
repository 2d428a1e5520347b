"""Shared pytest fixtures.

The training fixtures below train one tiny model per test session and publish it, so that
every test needing a real version directory (training, and later the service and monitoring
tests) reuses it instead of training its own. Other suites may append their own fixtures to
this file; keep each group under its own heading.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

# Small enough to train in a few seconds on a 2-core CPU, large enough that the collapse guard
# reliably accepts the default (scaled, delta-mode) model on the built-in synthetic series.
TINY_TRAINING_ARGS = (
    "--synthetic-steps",
    "1500",
    "--window",
    "24",
    "--units",
    "16",
    "--epochs",
    "6",
    "--patience",
    "3",
    "--batch-size",
    "64",
    "--seed",
    "42",
)


@pytest.fixture(scope="session")
def tiny_training_args() -> list[str]:
    """CLI flags of the tiny training configuration (built-in synthetic series, no --output)."""
    return list(TINY_TRAINING_ARGS)


@pytest.fixture(scope="session")
def trained_output(tmp_path_factory, tiny_training_args) -> Path:
    """An artifact base directory holding one version trained with ``tiny_training_args``."""
    from training.train import main

    output = tmp_path_factory.mktemp("artifacts")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        exit_code = main([*tiny_training_args, "--output", str(output)])
    if exit_code != 0:
        pytest.fail(
            f"tiny training run exited {exit_code}; stderr:\n{stderr.getvalue()}", pytrace=False
        )
    return output


@pytest.fixture(scope="session")
def trained_version(trained_output) -> Path:
    """The published version directory of the session's tiny model (model.keras, manifest...)."""
    versions = [p for p in trained_output.iterdir() if not p.name.startswith(".")]
    assert len(versions) == 1, versions
    return versions[0]


# A version published by the code of format 1 before the typed manifest (checked in, 45 KB): what
# users already have on disk must keep loading.
FORMAT1_BASE = Path(__file__).parent / "fixtures" / "format1"


@pytest.fixture(scope="session")
def format1_version() -> Path:
    """The checked-in format-1 version directory (manifest.json, model.keras, scaler.joblib)."""
    (version,) = FORMAT1_BASE.iterdir()
    return version


# --------------------------------------------------------------------------------------------
# System tools
# --------------------------------------------------------------------------------------------

REQUIRE_SYSTEM_TOOLS_ENV = "FORECAST_REQUIRE_SYSTEM_TOOLS"


def require_tool(name: str) -> str:
    """The path of system binary ``name`` (e.g. ``promtool``, ``prometheus``).

    When it is missing the calling test skips, or fails when ``FORECAST_REQUIRE_SYSTEM_TOOLS=1``
    (as .ci/run sets), so that CI cannot pass by skipping.
    """
    import os
    import shutil

    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get(REQUIRE_SYSTEM_TOOLS_ENV) == "1":
        pytest.fail(
            f"{name} not installed but {REQUIRE_SYSTEM_TOOLS_ENV}=1; "
            "run scripts/install-system-deps.sh",
            pytrace=False,
        )
    pytest.skip(f"{name} not installed; run scripts/install-system-deps.sh")


# Test modules cannot `from conftest import require_tool`: tests/service/conftest.py shadows the
# module name. They take the binaries through these fixtures instead.
@pytest.fixture(scope="session")
def promtool_binary() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_tool("prometheus")
