"""The window transform and its inverse: the one implementation shared by training and serving.

A client sends raw windows ``[n, window, features]`` in training units; the fitted scaler scales
them, and the model sees the last ``steps`` rows of each (``window`` may be longer: see lags).

Inputs. With ``inputs="relative"`` (the default since format 2) the target's channel is the
window's target *relative to its last observed value*, divided by ``relative_scale`` (the
training split's RMS deviation of a window's target from its last value). A trend or a level
shift then leaves the inputs where training saw them: on trended series the level inputs of
format 1 left their training range and the model lost to persistence. Other features stay
scaled levels (a feature that rises or falls strictly is not an input at all, see
``training.prepare``). ``inputs="level"`` is format 1's transform, kept for its versions.

Seasonal lags. For each period ``p`` in ``lags`` one more channel carries the target one period
before the *next* step, ``y[t + 1 - p]`` at each of the ``steps`` positions (relative to the last
value too), as global forecasters feed seasonal lags: the model sees the same phase of the last
cycle without an LSTM over the whole cycle. A window must then hold ``steps + max(lags)`` rows
(the seasonal change below reaches one row further back than the lag).

Targets. The model does not predict scaled *levels*: in ``delta`` mode it predicts the change of
the target from an *anchor*, divided by the training-split RMS of that change at each horizon
step. The anchor is the window's last observed value; with ``anchor_period`` p it is the last
value plus the change at the same phase one period earlier (``y[T] + y[T+k-p] - y[T-p]`` for
step k), the classic seasonal difference: on strongly seasonal series the model then learns
the correction to "persistence plus seasonal change" instead of rediscovering the season. It
then gets one more input channel, the change over one period ``y[t] - y[t-p]`` at each step,
relative to the last such change: the anchored target is that series' next step, so the model
continues the seasonally differenced series as it continues the target's own. Without it the
network had to combine two channels at different positions to find it, and on half-hourly
demand it learned nothing beyond the anchor.
``level`` mode (anchor 0, step scale 1) predicts scaled levels; it exists for comparison and
reproductions.

The service imports this module; it must never grow a second copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.preprocessing import StandardScaler

from training.config import INPUT_MODES, TARGET_MODES
from training.manifest import TransformSpec, request_window


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
    """Scaler, input channels and target formulation. Build it with :meth:`fit` (training) or
    :meth:`from_spec` (a manifest)."""

    scaler: StandardScaler
    target_index: int
    window: int  # rows a client sends per window
    horizon: int
    mode: str
    step_scale: np.ndarray  # [horizon] float64
    inputs: str = "level"  # "relative" or "level" (format 1)
    steps: int = 0  # rows the LSTM runs over (the last ones of the window); 0: all of them
    lags: tuple[int, ...] = ()  # seasonal lag channels, in periods
    relative_scale: float = 1.0  # scaled-target units of a relative input
    anchor_period: int = 0  # 0: anchor at the last value; p: plus the seasonal change at p

    def __post_init__(self) -> None:
        if self.steps == 0:
            object.__setattr__(self, "steps", self.window)
        if self.anchor_period and self.anchor_period not in self.lags:
            raise ValueError(f"anchor period {self.anchor_period} is not one of the lags")
        if self.window < request_window(self.steps, self.lags):
            raise ValueError(
                f"a window of {self.window} rows cannot hold {self.steps} steps and lags "
                f"{self.lags}"
            )
        if self.anchor_period and self.window <= self.anchor_period:
            raise ValueError(
                f"a window of {self.window} rows cannot anchor at period {self.anchor_period}"
            )

    @property
    def n_features(self) -> int:
        return int(self.scaler.n_features_in_)

    @property
    def channels(self) -> int:
        """Model input channels: the features, one per seasonal lag, then with an anchor period
        the target's change over that period."""
        return self.n_features + len(self.lags) + (1 if self.anchor_period else 0)

    @classmethod
    def fit(
        cls,
        scaler: StandardScaler,
        train_values: np.ndarray,
        *,
        target_index: int,
        steps: int,
        horizon: int,
        mode: str = "delta",
        inputs: str = "relative",
        lags: tuple[int, ...] = (),
        anchor_period: int = 0,
    ) -> WindowTransform:
        """Derive the scales of the model's target and of its relative inputs from the training
        split only: the RMS of the scaled change from the anchor at each horizon step, and the
        RMS deviation of a window's target from its last value."""
        if mode not in TARGET_MODES:
            raise ValueError(f"unknown target mode {mode!r}")
        if inputs not in INPUT_MODES:
            raise ValueError(f"unknown input mode {inputs!r}")
        window = request_window(steps, lags)
        scaled = np.asarray(scaler.transform(train_values)[:, target_index], dtype=np.float64)
        ends = window_ends(len(scaled), window, horizon)
        step_scale = np.ones(horizon)
        if mode == "delta" and scaler.with_std:
            anchors = _anchors(
                sliding_windows(scaled[:, None], window, ends)[:, :, 0], horizon, anchor_period
            )
            deltas = future_targets(scaled, horizon, ends) - anchors
            # RMS, not std: a steady trend moves by a near-constant step whose std is ~0.
            step_scale = np.maximum(np.sqrt(np.mean(deltas**2, axis=0)), 1e-6)
        relative_scale = 1.0
        if inputs == "relative" and scaler.with_std:  # --no-scaling leaves inputs raw
            recent = sliding_windows(scaled[:, None], steps, ends)[:, :, 0]
            relative_scale = max(float(np.sqrt(np.mean((recent - recent[:, -1:]) ** 2))), 1e-6)
        return cls(
            scaler, target_index, window, horizon, mode, step_scale, inputs, steps, lags,
            relative_scale, anchor_period if mode == "delta" else 0,
        )  # fmt: skip

    def to_spec(self) -> TransformSpec:
        """The manifest's record of the transform (the scaler is saved on its own)."""
        return TransformSpec(
            mode=self.mode,
            target_index=self.target_index,
            step_scale=tuple(float(s) for s in self.step_scale),
            inputs=self.inputs,
            steps=self.steps,
            lags=self.lags,
            relative_scale=self.relative_scale,
            anchor_period=self.anchor_period,
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
            inputs=spec.inputs,
            steps=spec.steps or window,
            lags=spec.lags,
            relative_scale=spec.relative_scale,
            anchor_period=spec.anchor_period,
        )

    # ---- forward ---------------------------------------------------------------------------

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Raw ``[..., features]`` in training units -> scaled float32, same shape."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1, self.n_features)
        with np.errstate(over="ignore", invalid="ignore"):  # inf is rejected per window later
            scaled: np.ndarray = self.scaler.transform(flat).astype(np.float32)
        return scaled.reshape(np.shape(values))

    def encode_windows(self, raw_windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows -> (model inputs ``[n, steps, channels]`` float32, anchors
        ``[n, horizon]``, scaled: see the module doc; 0 in ``level`` mode)."""
        scaled = self.scale(raw_windows)
        ti, steps, window = self.target_index, self.steps, self.window
        last = scaled[:, -1, ti].astype(np.float64)
        x = np.empty((len(scaled), steps, self.channels), np.float32)
        x[:, :, : self.n_features] = scaled[:, window - steps :, :]
        for k, period in enumerate(self.lags):
            start = window - steps + 1 - period
            x[:, :, self.n_features + k] = scaled[:, start : start + steps, ti]
        with np.errstate(over="ignore", invalid="ignore"):
            if self.inputs == "relative":
                for c in (ti, *range(self.n_features, self.n_features + len(self.lags))):
                    x[:, :, c] = (x[:, :, c] - last[:, None]) / self.relative_scale
            if self.anchor_period:
                # The change over one period at each step, relative to the last such change:
                # the series the anchored target continues (its next step is the target).
                start, p = window - steps, self.anchor_period
                change = scaled[:, start:, ti] - scaled[:, start - p : window - p, ti]
                # In units of the anchored target's one-step scale: the size of its next step.
                x[:, :, -1] = (change - change[:, -1:]) / self.step_scale[0]
        if self.mode == "delta":
            target = scaled[:, :, ti].astype(np.float64)
            anchors = _anchors(target, self.horizon, self.anchor_period)
        else:
            anchors = np.zeros((len(scaled), self.horizon))
        return x, anchors

    def monitored_rows(self, inputs: np.ndarray) -> np.ndarray:
        """One row per window of what the model sees, for the drift and collapse detectors:
        the newest input of each feature. A relative target input is 0 at the newest step by
        construction, so its last change (the step before) stands in for it."""
        rows = np.array(inputs[:, -1, : self.n_features], dtype=np.float64)
        if self.inputs == "relative" and self.steps > 1:
            rows[:, self.target_index] = inputs[:, -2, self.target_index]
        return rows

    def encode_targets(self, scaled_future: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Scaled future target values ``[n, horizon]`` -> what the model is trained to output."""
        targets: np.ndarray = (scaled_future - anchors) / self.step_scale
        return targets.astype(np.float32)

    # ---- inverse ---------------------------------------------------------------------------

    def decode(self, raw_output: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Model output ``[n, horizon]`` -> forecasts in target units ``[n, horizon]``."""
        scaled = anchors + np.asarray(raw_output, dtype=np.float64) * self.step_scale
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


def _anchors(target_windows: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """``[n, horizon]`` anchors from the scaled target of each window ``[n, window]``: the last
    value, plus with ``period`` p the change at the same phase one period earlier
    (``y[T+k-p] - y[T-p]`` at step k; steps beyond p repeat the last cycle)."""
    last = target_windows[:, -1]
    anchors = np.repeat(last[:, None], horizon, axis=1)
    if period:
        end = target_windows.shape[1] - 1  # the position of y[T]
        for k in range(1, horizon + 1):
            phase = (k - 1) % period + 1
            anchors[:, k - 1] += (
                target_windows[:, end + phase - period] - target_windows[:, end - period]
            )
    return anchors
