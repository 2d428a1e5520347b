"""What the load generator sends: the served version's held-out windows, as serialized requests.

Every system under test gets byte-for-byte the same request payloads. Nothing here imports
TensorFlow, so the orchestrator and the client processes stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.client import request_from_windows
from training.artifacts import resolve_version_dir
from training.manifest import Manifest
from training.replay import NotSyntheticError, manifest_held_out_windows


@dataclass(frozen=True)
class Mode:
    """One way of calling the service."""

    name: str
    rpc: str  # "unary" (Forecast) or "stream" (StreamForecast)
    windows_per_request: int
    label: str


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("unary", "unary", 1, "Forecast, 1 window/request"),
        Mode("batch64", "unary", 64, "Forecast, 64 windows/request"),
        Mode("batch256", "unary", 256, "Forecast, 256 windows/request"),
        Mode("stream", "stream", 1, "StreamForecast, 1 window/message"),
    )
}

# Distinct payloads each client cycles through, bounded so a client holds at most ~4 MB of them.
MAX_PAYLOAD_WINDOWS = 4096


class WorkloadError(Exception):
    """The version cannot be benchmarked with its own held-out data (one-line message)."""


@dataclass(frozen=True)
class ModelShape:
    version: str
    window: int
    horizon: int
    feature_names: tuple[str, ...]


def model_shape(artifacts: Path) -> tuple[Path, ModelShape, Manifest]:
    """Resolve and verify a version (format and checksums only; nothing is deserialised)."""
    version_dir = resolve_version_dir(artifacts)
    manifest = Manifest.load(version_dir)
    shape = ModelShape(
        version=manifest.version,
        window=manifest.window,
        horizon=manifest.horizon,
        feature_names=manifest.feature_names,
    )
    return version_dir, shape, manifest


def held_out(manifest: Manifest) -> np.ndarray:
    """Raw validation + test windows ``[n, window, F]`` float32 (the wire precision)."""
    try:
        return manifest_held_out_windows(manifest).astype(np.float32)
    except NotSyntheticError as exc:
        raise WorkloadError(str(exc)) from None


def batches(windows: np.ndarray, per_request: int) -> list[np.ndarray]:
    """Consecutive held-out windows per request, wrapping around; the same list every call."""
    n = len(windows)
    count = max(1, min(n, MAX_PAYLOAD_WINDOWS // per_request))
    return [windows[np.arange(i * per_request, (i + 1) * per_request) % n] for i in range(count)]


def payloads(windows: np.ndarray, per_request: int) -> list[bytes]:
    """Serialized ``ForecastRequest`` messages, built with the service's own client code."""
    return [
        request_from_windows(batch).SerializeToString() for batch in batches(windows, per_request)
    ]
