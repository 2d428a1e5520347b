"""Held-out traffic for detector replays: the validation and test windows of a series, sent
through the model exactly as the service would see them (float32 on the wire)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from monitoring.replay import Traffic
from training.artifacts import Artifacts
from training.data import Series, synthetic_series
from training.manifest import Manifest
from training.predict import predict_windows
from training.prepare import prepare
from training.transform import sliding_windows, window_ends


def held_out_windows(
    series: Series, *, window: int, horizon: int, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """Raw windows ``[n, window, F]`` of the validation then the test split, in time order."""
    prepared = prepare(
        series,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        window=window,
        horizon=horizon,
    )
    parts = []
    for name in ("val", "test"):
        values = prepared.splits[name]
        parts.append(sliding_windows(values, window, window_ends(len(values), window, horizon)))
    return np.concatenate(parts)


class NotSyntheticError(ValueError):
    """The version was trained on ``--data``, so its held-out windows cannot be rebuilt here."""


def manifest_held_out_windows(manifest: Manifest) -> np.ndarray:
    """The held-out raw windows of a version trained on the built-in synthetic series.

    The series is rebuilt with the training flags recorded in the manifest, so these are
    windows the model never trained on.
    """
    argv = list(manifest.training.argv)
    if "--data" in argv:
        raise NotSyntheticError(
            "this version was trained on --data; replays use the built-in synthetic series, "
            "so train one with `make train`"
        )

    def flag(name: str, default: str) -> str:
        return argv[argv.index(name) + 1] if name in argv else default

    return held_out_windows(
        synthetic_series(int(flag("--synthetic-steps", "6000"))),
        window=manifest.window,
        horizon=manifest.horizon,
        val_fraction=float(flag("--val-fraction", "0.15")),
        test_fraction=float(flag("--test-fraction", "0.15")),
    )


def traffic_for(
    artifacts: Artifacts,
    raw_windows: np.ndarray,
    distort: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Traffic:
    """What the monitor sees when ``raw_windows`` (optionally distorted) are served."""
    windows = raw_windows if distort is None else distort(raw_windows.copy())
    windows = windows.astype(np.float32).astype(np.float64)  # the gRPC wire format
    transform = artifacts.transform()
    forecasts, raw_output = predict_windows(artifacts.model, transform, windows)
    inputs, _ = transform.encode_windows(windows)
    return Traffic(transform.monitored_rows(inputs), raw_output, forecasts)


def drift_scenarios(artifacts: Artifacts) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The input-scale faults the drift detector must catch, as window distortions:
    x10, /10, already-standardized values sent as raw, and +-3 training stds on each feature.

    With relative inputs an offset of the target is not among them: the model sees the target
    relative to its last value, so a level shift leaves its inputs unchanged (a trend or a
    level shift is healthy traffic for it, and the forecast moves with the level)."""
    scaler = artifacts.scaler
    cases: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "x10": lambda w: w * 10.0,
        "div10": lambda w: w / 10.0,
        "standardized_sent_as_raw": lambda w: (w - scaler.mean_) / scaler.scale_,
    }
    transform = artifacts.manifest.transform
    for i, name in enumerate(artifacts.feature_names):
        if transform.inputs == "relative" and i == transform.target_index:
            continue
        for sign in (+1.0, -1.0):
            cases[f"offset_{'+' if sign > 0 else '-'}3std_{name}"] = _offset(
                i, sign * 3.0 * float(scaler.scale_[i])
            )
    return cases


def _offset(feature: int, amount: float) -> Callable[[np.ndarray], np.ndarray]:
    def shift(windows: np.ndarray) -> np.ndarray:
        windows[..., feature] += amount
        return windows

    return shift
