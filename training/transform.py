"""The window transform and its inverse: the one implementation shared by training and serving.

Raw windows ``[n, window, features]`` in training units become model inputs by the fitted
scaler. The model does not predict scaled *levels*: in the default ``delta`` mode it predicts
the change of the target from the window's last observed value (the "anchor"), divided by the
training-split standard deviation of that change for each horizon step. On series with a trend
or level shifts this keeps the model inside the range it was trained on, and it is what makes
the model beat persistence where a level model loses even to the mean forecast.

``level`` mode (anchor 0, step scale 1) predicts scaled levels directly; it exists for
comparison and reproductions.

The service imports this module; it must never grow a second copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.preprocessing import StandardScaler

from training.config import TARGET_MODES
from training.manifest import TransformSpec


def fit_scaler(train_values: np.ndarray, *, scaling: bool = True) -> StandardScaler:
    """Fit the scaler on the training split only. ``scaling=False`` gives an identity scaler."""
    scaler = StandardScaler(with_mean=scaling, with_std=scaling)
    scaler.fit(train_values)
    return scaler


def window_ends(n_rows: int, window: int, horizon: int) -> np.ndarray:
    """Row indices ``t`` for which rows ``t-window+1..t`` and targets ``t+1..t+horizon`` exist."""
    return np.arange(window - 1, n_rows - horizon)


def sliding_windows(values: np.ndarray, window: int, ends: np.ndarray) -> np.ndarray:
    """Windows ``values[t-window+1 : t+1]`` for each ``t`` in ``ends``, as ``[n, window, F]``."""
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # [T-w+1, F, w]
    return np.ascontiguousarray(view[ends - window + 1].transpose(0, 2, 1))


def future_targets(target: np.ndarray, horizon: int, ends: np.ndarray) -> np.ndarray:
    """``target[t+1 .. t+horizon]`` for each ``t`` in ``ends``: ``[n, horizon]``."""
    steps = ends[:, None] + np.arange(1, horizon + 1)[None, :]
    return target[steps]


@dataclass(frozen=True)
class WindowTransform:
    """Scaler + target formulation. Build it with :meth:`fit` (training) or from a manifest."""

    scaler: StandardScaler
    target_index: int
    window: int
    horizon: int
    mode: str
    step_scale: np.ndarray  # [horizon] float64

    @property
    def n_features(self) -> int:
        return int(self.scaler.n_features_in_)

    @classmethod
    def fit(
        cls,
        scaler: StandardScaler,
        train_values: np.ndarray,
        *,
        target_index: int,
        window: int,
        horizon: int,
        mode: str = "delta",
    ) -> WindowTransform:
        """Derive the per-step scale of the model target (the RMS of the scaled change at each
        horizon step) from the training split only."""
        if mode not in TARGET_MODES:
            raise ValueError(f"unknown target mode {mode!r}")
        step_scale = np.ones(horizon)
        if mode == "delta" and scaler.with_std:
            scaled = scaler.transform(train_values)[:, target_index]
            ends = window_ends(len(scaled), window, horizon)
            deltas = future_targets(scaled, horizon, ends) - scaled[ends, None]
            # RMS, not std: a steady trend moves by a near-constant step whose std is ~0.
            step_scale = np.maximum(np.sqrt(np.mean(deltas**2, axis=0)), 1e-6)
        return cls(scaler, target_index, window, horizon, mode, step_scale)

    def to_spec(self) -> TransformSpec:
        """The manifest's record of the target formulation (the scaler is saved on its own)."""
        return TransformSpec(
            mode=self.mode,
            target_index=self.target_index,
            step_scale=tuple(float(s) for s in self.step_scale),
        )

    @classmethod
    def from_spec(
        cls, scaler: StandardScaler, spec: TransformSpec, *, window: int, horizon: int
    ) -> WindowTransform:
        return cls(
            scaler=scaler,
            target_index=spec.target_index,
            window=window,
            horizon=horizon,
            mode=spec.mode,
            step_scale=np.asarray(spec.step_scale, dtype=np.float64),
        )

    # ---- forward ---------------------------------------------------------------------------

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Raw ``[..., features]`` in training units -> scaled float32, same shape."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1, self.n_features)
        with np.errstate(over="ignore", invalid="ignore"):  # inf is rejected per window later
            scaled: np.ndarray = self.scaler.transform(flat).astype(np.float32)
        return scaled.reshape(np.shape(values))

    def encode_windows(self, raw_windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows -> (model inputs ``[n, window, features]`` float32, anchors ``[n]``).

        The anchor is the scaled last observed target value in ``delta`` mode, else 0.
        """
        x = self.scale(raw_windows)
        if self.mode == "delta":
            anchors = x[:, -1, self.target_index].astype(np.float64)
        else:
            anchors = np.zeros(len(x))
        return x, anchors

    def encode_targets(self, scaled_future: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Scaled future target values ``[n, horizon]`` -> what the model is trained to output."""
        targets: np.ndarray = (scaled_future - anchors[:, None]) / self.step_scale
        return targets.astype(np.float32)

    # ---- inverse ---------------------------------------------------------------------------

    def decode(self, raw_output: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Model output ``[n, horizon]`` -> forecasts in target units ``[n, horizon]``."""
        scaled = anchors[:, None] + np.asarray(raw_output, dtype=np.float64) * self.step_scale
        mean, scale = self.target_affine()
        forecasts: np.ndarray = scaled * scale + mean
        return forecasts

    def target_affine(self) -> tuple[float, float]:
        """(mean, scale) of the fitted scaler for the target column; identity when unscaled."""
        mean = self.scaler.mean_[self.target_index] if self.scaler.with_mean else 0.0
        scale = self.scaler.scale_[self.target_index] if self.scaler.with_std else 1.0
        return float(mean), float(scale)

    def training_pairs(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All windows of one contiguous split: (model inputs, model targets, anchors).

        Windows never reach outside ``values``, so no window straddles a split boundary.
        """
        ends = window_ends(len(values), self.window, self.horizon)
        x, anchors = self.encode_windows(sliding_windows(values, self.window, ends))
        scaled_target = self.scale(values)[:, self.target_index].astype(np.float64)
        y = self.encode_targets(future_targets(scaled_target, self.horizon, ends), anchors)
        return x, y, anchors
