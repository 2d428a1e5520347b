"""Fit, evaluate, judge and publish: the TensorFlow half of ``python -m training.train``.

:func:`fit_and_publish` runs the steps in order: set up the runtime, fit, evaluate, score the
baselines on the model's points, judge, calibrate the monitoring and the prediction intervals,
build the manifest, then publish or reject. Each step reads its settings from the one
:class:`~training.config.TrainConfig`.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import joblib
import keras
import numpy as np
import sklearn
import tensorflow as tf

from monitoring.calibration import calibrate
from monitoring.reference import Calibration, FeatureReference
from training import guard
from training.artifacts import new_version_name, publish
from training.baselines import Baselines, score_baselines
from training.callbacks import EpochProgress, GradientNorms
from training.config import INTERVAL_METHODS, TrainConfig
from training.data import Series
from training.distribute import fit_multiworker, is_chief, make_strategy, split_cpu
from training.intervals import (
    REPORTED_LEVELS,
    Conformal,
    ForecastIntervals,
    IntervalCalibration,
    fit_calibration,
    score,
)
from training.manifest import (
    MODEL_FILE,
    SCALER_FILE,
    DataRecord,
    Environment,
    GuardRecord,
    Imputation,
    Manifest,
    Reference,
    TrainingRecord,
)
from training.model import build_model, configure_devices
from training.predict import predict_windows
from training.prepare import Prepared
from training.reference import input_reference
from training.report import plot_report
from training.transform import WindowTransform, future_targets, sliding_windows, window_ends

log = logging.getLogger("training")

EXIT_OK, EXIT_COLLAPSED = 0, 3
EVALUATED_SPLITS = ("val", "test")
BASELINE_BUDGET_SECONDS = 60.0
"""Time the statistical baselines may take (training.baselines skips what does not fit)."""


@dataclass(frozen=True)
class Fitted:
    """A trained model and the record of its training."""

    model: Any
    device: str
    """``"GPU"`` or ``"CPU"``."""
    history: dict[str, list[float]]
    """Per-epoch ``loss`` and ``val_loss``."""
    gradient_norms: dict[str, list[float]]
    """Per layer, per epoch; the first entry is from before the first update."""

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))

    @property
    def best_epoch(self) -> int:
        """The 1-based epoch with the lowest validation loss; 0 without validation loss."""
        val_loss = self.history.get("val_loss")
        return int(np.argmin(val_loss)) + 1 if val_loss else 0


@dataclass(frozen=True)
class SplitEvaluation:
    """The model's forecasts over one split's windows, and their metrics."""

    metrics: guard.SplitMetrics
    forecast: np.ndarray
    """Target units, ``[n, horizon]``."""
    raw_pred: np.ndarray
    """The model's output scale, ``[n, horizon]``."""
    truth: np.ndarray
    """Target units, ``[n, horizon]``."""
    last_value: np.ndarray
    """The window's last target value (the persistence forecast), ``[n]``."""
    rows: np.ndarray
    """The row of the whole (train, validation, test) series each first forecast step is for,
    ``[n]``: the points the baselines are scored on."""

    @property
    def one_step_mae(self) -> float:
        """MAE of the first forecast step, comparable with the one-step baselines."""
        return float(np.mean(np.abs(self.forecast[:, 0] - self.truth[:, 0])))


@dataclass(frozen=True)
class Judgement:
    """The guard's verdict on a run, and whether it may be published."""

    verdict: guard.Verdict
    diverged: bool
    """Non-finite metrics: never published, not even with ``allow_collapsed``."""
    vanishing_layers: list[str]
    """Layers whose gradients vanished (recorded; not a reason to reject on their own)."""
    baselines: Baselines
    """The baselines on the model's points, with the model's one-step MAE and, in
    ``guard_reasons``, those it did not beat on validation."""
    rejected: bool
    """Diverged; collapsed without ``allow_collapsed``; or not collapsed but worse than
    persistence or seasonal naive on validation without ``allow_worse_than_baselines``.
    Nothing is published. (A collapsed model loses to the baselines as a matter of course:
    ``allow_collapsed`` alone publishes it.)"""


@dataclass(frozen=True)
class Reports:
    """``report.png`` and ``report.json``, written beside a published or a rejected version."""

    title: str
    manifest: Manifest
    fitted: Fitted
    test: SplitEvaluation
    test_intervals: ForecastIntervals | None = None
    """The calibrated intervals of the test windows, drawn as bands around the forecast."""

    def write(self, directory: Path) -> None:
        bands = self.test_intervals
        plot_report(
            directory / "report.png",
            title=self.title,
            truth=self.test.truth[:, 0],
            forecast=self.test.forecast[:, 0],
            persistence=self.test.last_value,
            history=self.fitted.history,
            grad_norms=self.fitted.gradient_norms,
            baselines=self.manifest.baselines,
            bands=None if bands is None else (bands.levels, bands.lo[:, :, 0], bands.hi[:, :, 0]),
            band_scores=self.manifest.intervals.test if self.manifest.intervals else (),
        )
        # The manifest as it stands before publication seals it (no version, format or
        # checksums: the report is written before them, and manifest.json carries them).
        sealed = ("files", "version", "format_version")
        manifest = {k: v for k, v in self.manifest.to_dict().items() if k not in sealed}
        report = {
            **manifest,
            "history": self.fitted.history,
            "gradient_norms": self.fitted.gradient_norms,
        }
        (directory / "report.json").write_text(
            json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
        )


def fit_and_publish(prepared: Prepared, config: TrainConfig) -> int:
    """Train on ``prepared``, judge the model, and publish it under ``config.output`` unless
    it is rejected. Returns :data:`EXIT_OK` or :data:`EXIT_COLLAPSED`."""
    started = time.perf_counter()
    strategy, device = set_up_runtime(config)
    log_data(prepared, config)
    fitted = fit(prepared, config, strategy, device)
    evaluations = {name: evaluate_split(fitted.model, prepared, name) for name in EVALUATED_SPLITS}
    duration = time.perf_counter() - started
    baselines = score_model_baselines(prepared, evaluations)
    judgement = judge(prepared, config, fitted, evaluations, baselines)
    reference, monitoring = calibrate_monitoring(prepared, evaluations["val"])
    intervals, test_intervals = calibrate_intervals(prepared, evaluations, config.interval_method)
    version = new_version_name()
    manifest = build_manifest(
        version=version,
        config=config,
        prepared=prepared,
        fitted=fitted,
        evaluations=evaluations,
        judgement=judgement,
        reference=reference,
        monitoring=monitoring,
        intervals=intervals,
        duration=duration,
    )
    reports = Reports(
        title=_report_title(version, prepared, evaluations["test"].metrics),
        manifest=manifest,
        fitted=fitted,
        test=evaluations["test"],
        test_intervals=test_intervals,
    )
    if not is_chief():
        return finish_worker(judgement)
    for line in guard.comparison_lines(judgement.baselines):
        print(line)
    log.info("%s", interval_line(intervals))
    if judgement.rejected:
        return reject(config.output / ".rejected" / version, reports, judgement)
    return publish_version(config.output, version, reports, prepared.transform, judgement, duration)


def set_up_runtime(config: TrainConfig) -> tuple[tf.distribute.Strategy, str]:
    """Devices, distribution strategy and seeds. Returns the strategy and "GPU" or "CPU"."""
    split_cpu(config.cpu_devices)
    strategy = make_strategy(config.distribute)
    device = configure_devices()
    keras.utils.set_random_seed(config.seed)
    if config.distribute == "none":
        tf.config.experimental.enable_op_determinism()
    return strategy, device


def log_data(prepared: Prepared, config: TrainConfig) -> None:
    """The data, the window counts per split and the window shape; how the window was chosen
    and what the forecast is anchored at."""
    series = prepared.series
    if prepared.window_choice is not None:
        log.info("window: %s", prepared.window_choice.reason)
    period = prepared.transform.anchor_period
    log.info(
        "anchor: %s",
        f"the last value plus the change one period ({period} steps) earlier, which beats "
        "persistence on the training split"
        if period
        else "the last value",
    )
    log.info(
        "data: %d rows x %d features (%s), target %s, %d imputed cells; windows train/val/test "
        "%d/%d/%d; window %d rows (the LSTM runs over the last %d, inputs %s%s), horizon %d, "
        "target mode %s%s",
        len(series.values),
        len(series.feature_names),
        ",".join(series.feature_names),
        series.target,
        prepared.n_imputed,
        len(prepared.pairs["train"][0]),
        len(prepared.pairs["val"][0]),
        len(prepared.pairs["test"][0]),
        prepared.transform.window,
        prepared.transform.steps,
        prepared.transform.inputs,
        "".join(f", lag {p}" for p in prepared.transform.lags),
        config.horizon,
        config.target_mode,
        ", NO SCALING" if config.no_scaling else "",
    )


def fit(
    prepared: Prepared, config: TrainConfig, strategy: tf.distribute.Strategy, device: str
) -> Fitted:
    """Train a new model on the training windows, validating on the validation windows."""
    x_train, y_train, _ = prepared.pairs["train"]
    x_val, y_val, _ = prepared.pairs["val"]
    with strategy.scope():
        model = new_model(config, prepared.transform)
    grads = GradientNorms(x_train, y_train)
    callbacks = [grads, *_training_callbacks(config)]
    if config.distribute == "multiworker":
        history = fit_multiworker(
            model,
            strategy,
            (x_train, y_train),
            (x_val, y_val),
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            callbacks=callbacks,
        )
        model = _unreplicated(model, config, prepared.transform)
    else:
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=config.epochs,
            batch_size=config.batch_size,
            shuffle=True,  # shuffles windows inside the training split only
            verbose=0,
            callbacks=callbacks,
        ).history
    return Fitted(
        model=model,
        device=device,
        history={k: [float(v) for v in vals] for k, vals in history.items()},
        gradient_norms=grads.history,
    )


def new_model(config: TrainConfig, transform: WindowTransform) -> Any:
    """A new compiled forecaster of the configured shape: the one place models are built."""
    return build_model(
        window=transform.steps,
        n_features=transform.channels,
        horizon=config.horizon,
        units=config.units,
        dropout=config.dropout,
        l2=config.l2,
        learning_rate=config.learning_rate,
        clipnorm=config.clipnorm,
    )


def _training_callbacks(config: TrainConfig) -> list[keras.callbacks.Callback]:
    """Early stopping, learning-rate decay and one progress line per epoch."""
    return [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-5
        ),
        EpochProgress(config.epochs),
    ]


def _unreplicated(model: Any, config: TrainConfig, transform: WindowTransform) -> Any:
    """A plain copy of a multi-worker model for evaluation and saving (Keras 3 cannot predict
    under MultiWorkerMirroredStrategy either)."""
    plain = new_model(config, transform)
    plain.set_weights(model.get_weights())
    return plain


def raw_split_windows(prepared: Prepared, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Every window of split ``name`` in training units ``[n, window, features]``, and the row
    of the split each ends at ``[n]``."""
    transform = prepared.transform
    values = prepared.splits[name]
    ends = window_ends(len(values), transform.window, transform.horizon)
    return sliding_windows(values, transform.window, ends), ends


def evaluate_split(model: Any, prepared: Prepared, name: str) -> SplitEvaluation:
    """Forecast every window of split ``name`` and score it against the baselines."""
    transform = prepared.transform
    values = prepared.splits[name]
    offset = _split_offset(prepared, name)
    raw_windows, ends = raw_split_windows(prepared, name)
    forecast, raw_pred = predict_windows(model, transform, raw_windows)
    target = values[:, transform.target_index]
    truth = future_targets(target, transform.horizon, ends)
    last_value = target[ends]
    metrics = guard.evaluate(
        forecast=forecast,
        truth=truth,
        last_value=last_value,
        train_mean=float(prepared.splits["train"][:, transform.target_index].mean()),
        raw_pred=raw_pred,
        raw_truth=prepared.pairs[name][1].astype(np.float64),
    )
    return SplitEvaluation(metrics, forecast, raw_pred, truth, last_value, offset + ends + 1)


_SPLIT_ORDER = ("train", "val", "test")


def _split_offset(prepared: Prepared, name: str) -> int:
    """The row of the whole series at which split ``name`` starts."""
    before = _SPLIT_ORDER[: _SPLIT_ORDER.index(name)]
    return sum(len(prepared.splits[split]) for split in before)


def score_model_baselines(prepared: Prepared, evaluations: dict[str, SplitEvaluation]) -> Baselines:
    """Score the baselines' one-step forecasts, at the seasonal periods found when the window
    was chosen, on exactly the rows the model's first forecast step is scored on."""
    index = prepared.transform.target_index
    target = np.concatenate([prepared.splits[split][:, index] for split in _SPLIT_ORDER])
    choice = prepared.window_choice
    baselines = score_baselines(
        target,
        len(prepared.splits["train"]),
        {name: evaluations[name].rows for name in EVALUATED_SPLITS},
        choice.periods if choice else (),
        budget_seconds=BASELINE_BUDGET_SECONDS,
    )
    for name, why in baselines.skipped.items():
        log.info("baseline %s not scored: %s", name, why)
    return replace(
        baselines,
        model_val_mae=evaluations["val"].one_step_mae,
        model_test_mae=evaluations["test"].one_step_mae,
    )


def judge(
    prepared: Prepared,
    config: TrainConfig,
    fitted: Fitted,
    evaluations: dict[str, SplitEvaluation],
    baselines: Baselines,
) -> Judgement:
    """The collapse guard's verdict with its likely causes, and the baselines the model does not
    beat on validation with theirs; a diverged run is always rejected."""
    metrics = {name: ev.metrics for name, ev in evaluations.items()}
    verdict = guard.judge(metrics, config.std_ratio_threshold)
    if verdict.collapsed:
        verdict.causes = _collapse_causes(prepared, config, fitted)
    diverged = not all(np.isfinite(v) for m in metrics.values() for v in m.to_dict().values())
    if diverged:
        verdict.causes.insert(
            0,
            "training diverged: non-finite loss or predictions (lower "
            "--learning-rate or --clipnorm)",
        )
    model_val_mae = evaluations["val"].one_step_mae
    reasons = guard.baselines_not_beaten(model_val_mae, baselines)
    causes = _baseline_causes(prepared, config, fitted, baselines, model_val_mae) if reasons else []
    collapse_rejected = verdict.collapsed and not config.allow_collapsed
    # A collapsed model published with --allow-collapsed loses to the baselines because it is
    # collapsed; that override covers it.
    baselines_rejected = (
        bool(reasons) and not verdict.collapsed and not config.allow_worse_than_baselines
    )
    rejected = diverged or collapse_rejected or baselines_rejected
    return Judgement(
        verdict=verdict,
        diverged=diverged,
        vanishing_layers=guard.vanishing_layers(fitted.gradient_norms),
        baselines=replace(
            baselines,
            guard_reasons=tuple(reasons),
            guard_causes=tuple(causes),
            published_despite_baselines=bool(reasons) and not rejected,
        ),
        rejected=rejected,
    )


def _baseline_causes(
    prepared: Prepared,
    config: TrainConfig,
    fitted: Fitted,
    baselines: Baselines,
    model_val_mae: float,
) -> list[str]:
    shares = guard.share_outside_range(prepared.pairs["train"][0], prepared.pairs["val"][0])
    names = _input_channel_names(prepared)
    return guard.baseline_causes(
        baselines=baselines,
        model_val_mae=model_val_mae,
        steps=prepared.transform.steps,
        lags=prepared.transform.lags,
        inputs_out_of_range=dict(zip(names, shares, strict=True)),
        epochs_run=fitted.epochs_run,
        max_epochs=config.epochs,
        best_epoch=fitted.best_epoch,
    )


def _input_channel_names(prepared: Prepared) -> tuple[str, ...]:
    """The model's input channels: the features, the target one period back per lag, then the
    target's change over the anchor period."""
    target, transform = prepared.series.target, prepared.transform
    lags = tuple(f"{target} {p} steps back" for p in transform.lags)
    change = (f"{target} change over {transform.anchor_period} steps",)
    return prepared.series.feature_names + lags + (change if transform.anchor_period else ())


def _collapse_causes(prepared: Prepared, config: TrainConfig, fitted: Fitted) -> list[str]:
    x_train = prepared.pairs["train"][0]
    inputs = x_train.reshape(-1, x_train.shape[-1])
    train_target = prepared.splits["train"][:, prepared.transform.target_index]
    return guard.diagnose(
        input_mean=inputs.mean(axis=0),
        input_std=inputs.std(axis=0),
        feature_names=_input_channel_names(prepared),
        grad_history=fitted.gradient_norms,
        epochs_run=fitted.epochs_run,
        max_epochs=config.epochs,
        best_epoch=fitted.best_epoch,
        dropout=config.dropout,
        units=config.units,
        target_std=float(np.std(train_target)),
        anchor_period=prepared.transform.anchor_period,
    )


def calibrate_monitoring(
    prepared: Prepared, validation: SplitEvaluation
) -> tuple[dict[str, FeatureReference], Calibration]:
    """The training inputs' reference statistics, and the collapse/drift detectors calibrated
    by replaying the validation split (the manifest's ``reference`` and ``monitoring``)."""
    train = prepared.splits["train"]
    feature_names = prepared.series.feature_names
    # The detectors see one row per window, of what the model sees (transform.monitored_rows).
    transform = prepared.transform
    seen = transform.monitored_rows(prepared.pairs["train"][0])
    reference = input_reference(seen, train, feature_names)
    started = time.perf_counter()
    x_val = prepared.pairs["val"][0]
    monitoring = calibrate(
        validation.raw_pred, transform.monitored_rows(x_val), reference=reference
    )
    log.info(
        "calibrated the collapse/drift detectors on validation replay in %.1fs "
        "(collapse threshold %.3g)",
        time.perf_counter() - started,
        monitoring.collapse.threshold,
    )
    return reference, monitoring


def calibrate_intervals(
    prepared: Prepared, evaluations: dict[str, SplitEvaluation], method: str
) -> tuple[IntervalCalibration, ForecastIntervals]:
    """Split conformal intervals calibrated on the validation windows with every method
    (:mod:`training.intervals`), each scored on the test windows; returns the calibration of
    ``method``, carrying every method's test figures, and its intervals of the test windows."""
    transform = prepared.transform
    val, test = evaluations["val"], evaluations["test"]
    val_windows, test_windows = (raw_split_windows(prepared, s)[0] for s in ("val", "test"))
    train_windows = raw_split_windows(prepared, "train")[0]
    calibrations = {
        name: fit_calibration(
            name,
            forecasts=val.forecast,
            truth=val.truth,
            raw_windows=val_windows,
            train_windows=train_windows,
            transform=transform,
        )
        for name in INTERVAL_METHODS
    }
    figures = {
        name: score(
            Conformal(calibration, transform),
            forecasts=test.forecast,
            truth=test.truth,
            raw_windows=test_windows,
        )
        for name, calibration in calibrations.items()
    }
    chosen = replace(calibrations[method], test=figures[method], methods=figures)
    bands = Conformal(chosen, transform).bounds(test.forecast, test_windows, REPORTED_LEVELS)
    return chosen, bands


def interval_line(intervals: IntervalCalibration) -> str:
    """One line on the intervals' test coverage and width, every method's."""
    parts = []
    for name, scores in intervals.methods.items():
        figures = ", ".join(
            f"{s.level:g}% coverage {s.coverage:.3f} width {s.mean_width:.4g}" for s in scores
        )
        parts.append(f"{name}{' (served)' if name == intervals.method else ''}: {figures}")
    return (
        f"intervals on test, split conformal on {intervals.windows} validation windows: "
        + "; ".join(parts)
    )


def build_manifest(
    *,
    version: str,
    config: TrainConfig,
    prepared: Prepared,
    fitted: Fitted,
    evaluations: dict[str, SplitEvaluation],
    judgement: Judgement,
    reference: dict[str, FeatureReference],
    monitoring: Calibration,
    intervals: IntervalCalibration | None = None,
    duration: float,
) -> Manifest:
    """The manifest of this run (``publish`` adds the checksums)."""
    series = prepared.series
    val = evaluations["val"]
    return Manifest(
        version=version,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        feature_names=series.feature_names,
        target=series.target,
        window=prepared.transform.window,
        horizon=config.horizon,
        scaling=not config.no_scaling,
        transform=prepared.transform.to_spec(),
        imputation=Imputation(
            method="forward-fill, then training-split mean for leading gaps",
            train_means=_floats(prepared.train_means),
        ),
        reference=Reference(
            features=reference,
            validation_prediction_std=_floats(val.raw_pred.std(axis=0)),
            validation_prediction_std_target_units=_floats(val.forecast.std(axis=0)),
        ),
        monitoring=monitoring,
        metrics={name: ev.metrics for name, ev in evaluations.items()},
        baselines=judgement.baselines,
        intervals=intervals,
        guard=_guard_record(config, judgement),
        training=_training_record(config, prepared, fitted, duration),
        environment=_environment(),
        data=_data_record(config, series),
    )


def _data_record(config: TrainConfig, series: Series) -> DataRecord | None:
    if config.data is None:
        return None
    time = series.time
    return DataRecord(
        time_column=time.column if time else None,
        time_kind=time.kind if time else None,
        step=time.step if time else None,
        start=time.start if time else None,
        inserted_rows=time.inserted if time else 0,
        dropped_columns=dict(series.dropped),
    )


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _guard_record(config: TrainConfig, judgement: Judgement) -> GuardRecord:
    verdict = judgement.verdict
    return GuardRecord(
        collapsed=verdict.collapsed,
        std_ratio_threshold=config.std_ratio_threshold,
        reasons=tuple(verdict.reasons),
        causes=tuple(verdict.causes),
        vanishing_gradient_layers=tuple(judgement.vanishing_layers),
        published_despite_collapse=verdict.collapsed and config.allow_collapsed,
    )


def _training_record(
    config: TrainConfig, prepared: Prepared, fitted: Fitted, duration: float
) -> TrainingRecord:
    choice = prepared.window_choice
    return TrainingRecord(
        argv=config.argv,
        units=config.units,
        dropout=config.dropout,
        l2=config.l2,
        epochs_max=config.epochs,
        epochs_run=fitted.epochs_run,
        best_epoch=fitted.best_epoch,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        clipnorm=config.clipnorm,
        seed=config.seed,
        device=fitted.device,
        duration_seconds=round(duration, 2),
        windows={name: int(len(p[0])) for name, p in prepared.pairs.items()},
        imputed_cells=prepared.n_imputed,
        seasonal_periods=choice.periods if choice else (),
        window_choice=choice.reason if choice else "",
    )


def _environment() -> Environment:
    return Environment(
        python=platform.python_version(),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        numpy=np.__version__,
        scikit_learn=sklearn.__version__,
    )


def _report_title(version: str, prepared: Prepared, test: guard.SplitMetrics) -> str:
    transform = prepared.transform
    return (
        f"{version}  target={prepared.series.target}  window={transform.window} "
        f"horizon={transform.horizon}  "
        f"test MAE {test.mae:.4g} vs persistence {test.persistence_mae:.4g}"
    )


def finish_worker(judgement: Judgement) -> int:
    """A non-chief multi-worker process: the chief publishes, this one only reports."""
    print(
        f"worker finished ({'rejected' if judgement.rejected else 'accepted'}); the chief "
        "publishes the artifacts"
    )
    return EXIT_COLLAPSED if judgement.rejected else EXIT_OK


def reject(directory: Path, reports: Reports, judgement: Judgement) -> int:
    """Write the reports to ``directory`` (nothing is published) and say why on stderr."""
    directory.mkdir(parents=True, exist_ok=True)
    reports.write(directory)
    if not (judgement.verdict.collapsed or judgement.diverged):
        return _reject_worse_than_baselines(directory, judgement.baselines)
    print(
        "REJECTED: the model is collapsed (near-constant output); nothing was published.",
        file=sys.stderr,
    )
    for reason in judgement.verdict.reasons:
        print(f"  why: {reason}", file=sys.stderr)
    for cause in judgement.verdict.causes:
        print(f"  likely cause: {cause}", file=sys.stderr)
    override = "" if judgement.diverged else " (override with --allow-collapsed)"
    print(f"  report: {directory}/report.png{override}", file=sys.stderr)
    return EXIT_COLLAPSED


def _reject_worse_than_baselines(directory: Path, baselines: Baselines) -> int:
    print(
        "REJECTED: the model does not beat the baselines on validation; nothing was published.",
        file=sys.stderr,
    )
    for reason in baselines.guard_reasons:
        print(f"  why: {reason}", file=sys.stderr)
    for cause in baselines.guard_causes:
        print(f"  likely cause: {cause}", file=sys.stderr)
    print(
        f"  report: {directory}/report.png (override with --allow-worse-than-baselines)",
        file=sys.stderr,
    )
    return EXIT_COLLAPSED


def publish_version(
    output: Path,
    version: str,
    reports: Reports,
    transform: WindowTransform,
    judgement: Judgement,
    duration: float,
) -> int:
    """Publish the model, scaler, reports and manifest as ``<output>/<version>``."""

    def write_version(directory: Path) -> Manifest:
        reports.fitted.model.save(directory / MODEL_FILE)
        joblib.dump(transform.scaler, directory / SCALER_FILE)
        reports.write(directory)
        return reports.manifest

    path = publish(output, version, write_version)
    if judgement.verdict.collapsed:
        print(
            f"WARNING: published a collapsed model because of --allow-collapsed: "
            f"{'; '.join(judgement.verdict.reasons)}",
            file=sys.stderr,
        )
    if judgement.baselines.published_despite_baselines:
        collapsed = judgement.verdict.collapsed
        flag = "--allow-collapsed" if collapsed else "--allow-worse-than-baselines"
        print(
            f"WARNING: published a model that does not beat the baselines because of {flag}: "
            f"{'; '.join(judgement.baselines.guard_reasons)}",
            file=sys.stderr,
        )
    test = reports.test.metrics
    print(
        f"published {path} in {duration:.0f}s: test MAE {test.mae:.4g} vs persistence "
        f"{test.persistence_mae:.4g} ({test.mae_vs_persistence:.2f}x)"
    )
    return EXIT_OK


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: report non-finite numbers as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
