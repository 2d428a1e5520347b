"""Fit, evaluate, judge and publish: the TensorFlow half of ``python -m training.train``.

:func:`fit_and_publish` runs the steps in order: set up the runtime, fit, evaluate, judge,
calibrate the monitoring, build the manifest, then publish or reject. Each step reads its
settings from the one :class:`~training.config.TrainConfig`.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from dataclasses import dataclass
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
from training.callbacks import EpochProgress, GradientNorms
from training.config import TrainConfig
from training.data import Series
from training.distribute import fit_multiworker, is_chief, make_strategy, split_cpu
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


@dataclass(frozen=True)
class Judgement:
    """The collapse guard's verdict on a run, and whether it may be published."""

    verdict: guard.Verdict
    diverged: bool
    """Non-finite metrics: never published, not even with ``allow_collapsed``."""
    vanishing_layers: list[str]
    """Layers whose gradients vanished (recorded; not a reason to reject on their own)."""
    rejected: bool
    """Diverged, or collapsed without ``allow_collapsed``: nothing is published."""


@dataclass(frozen=True)
class Reports:
    """``report.png`` and ``report.json``, written beside a published or a rejected version."""

    title: str
    manifest: Manifest
    fitted: Fitted
    test: SplitEvaluation

    def write(self, directory: Path) -> None:
        plot_report(
            directory / "report.png",
            title=self.title,
            truth=self.test.truth[:, 0],
            forecast=self.test.forecast[:, 0],
            persistence=self.test.last_value,
            history=self.fitted.history,
            grad_norms=self.fitted.gradient_norms,
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
    judgement = judge(prepared, config, fitted, evaluations)
    duration = time.perf_counter() - started
    reference, monitoring = calibrate_monitoring(prepared, evaluations["val"])
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
        duration=duration,
    )
    reports = Reports(
        title=_report_title(version, prepared.series.target, config, evaluations["test"].metrics),
        manifest=manifest,
        fitted=fitted,
        test=evaluations["test"],
    )
    if not is_chief():
        return finish_worker(judgement)
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
    """One log line: the data, the window counts per split and the window shape."""
    series = prepared.series
    log.info(
        "data: %d rows x %d features (%s), target %s, %d imputed cells; windows train/val/test "
        "%d/%d/%d; window %d, horizon %d, target mode %s%s",
        len(series.values),
        len(series.feature_names),
        ",".join(series.feature_names),
        series.target,
        prepared.n_imputed,
        len(prepared.pairs["train"][0]),
        len(prepared.pairs["val"][0]),
        len(prepared.pairs["test"][0]),
        config.window,
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
    n_features = len(prepared.series.feature_names)
    with strategy.scope():
        model = new_model(config, n_features)
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
        model = _unreplicated(model, config, n_features)
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


def new_model(config: TrainConfig, n_features: int) -> Any:
    """A new compiled forecaster of the configured shape: the one place models are built."""
    return build_model(
        window=config.window,
        n_features=n_features,
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


def _unreplicated(model: Any, config: TrainConfig, n_features: int) -> Any:
    """A plain copy of a multi-worker model for evaluation and saving (Keras 3 cannot predict
    under MultiWorkerMirroredStrategy either)."""
    plain = new_model(config, n_features)
    plain.set_weights(model.get_weights())
    return plain


def evaluate_split(model: Any, prepared: Prepared, name: str) -> SplitEvaluation:
    """Forecast every window of split ``name`` and score it against the baselines."""
    transform = prepared.transform
    values = prepared.splits[name]
    ends = window_ends(len(values), transform.window, transform.horizon)
    raw_windows = sliding_windows(values, transform.window, ends)
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
    return SplitEvaluation(metrics, forecast, raw_pred, truth, last_value)


def judge(
    prepared: Prepared,
    config: TrainConfig,
    fitted: Fitted,
    evaluations: dict[str, SplitEvaluation],
) -> Judgement:
    """The collapse guard's verdict with its likely causes; a diverged run is always rejected."""
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
    return Judgement(
        verdict=verdict,
        diverged=diverged,
        vanishing_layers=guard.vanishing_layers(fitted.gradient_norms),
        rejected=diverged or (verdict.collapsed and not config.allow_collapsed),
    )


def _collapse_causes(prepared: Prepared, config: TrainConfig, fitted: Fitted) -> list[str]:
    x_train = prepared.pairs["train"][0]
    inputs = x_train.reshape(-1, x_train.shape[-1])
    train_target = prepared.splits["train"][:, prepared.transform.target_index]
    return guard.diagnose(
        input_mean=inputs.mean(axis=0),
        input_std=inputs.std(axis=0),
        feature_names=prepared.series.feature_names,
        grad_history=fitted.gradient_norms,
        epochs_run=fitted.epochs_run,
        max_epochs=config.epochs,
        best_epoch=fitted.best_epoch,
        dropout=config.dropout,
        units=config.units,
        target_std=float(np.std(train_target)),
    )


def calibrate_monitoring(
    prepared: Prepared, validation: SplitEvaluation
) -> tuple[dict[str, FeatureReference], Calibration]:
    """The training inputs' reference statistics, and the collapse/drift detectors calibrated
    by replaying the validation split (the manifest's ``reference`` and ``monitoring``)."""
    train = prepared.splits["train"]
    feature_names = prepared.series.feature_names
    reference = input_reference(prepared.transform.scale(train), train, feature_names)
    started = time.perf_counter()
    x_val = prepared.pairs["val"][0]
    monitoring = calibrate(
        validation.raw_pred, x_val[:, -1, :].astype(np.float64), reference=reference
    )
    log.info(
        "calibrated the collapse/drift detectors on validation replay in %.1fs "
        "(collapse threshold %.3g)",
        time.perf_counter() - started,
        monitoring.collapse.threshold,
    )
    return reference, monitoring


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
        window=config.window,
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
    )


def _environment() -> Environment:
    return Environment(
        python=platform.python_version(),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        numpy=np.__version__,
        scikit_learn=sklearn.__version__,
    )


def _report_title(version: str, target: str, config: TrainConfig, test: guard.SplitMetrics) -> str:
    return (
        f"{version}  target={target}  window={config.window} horizon={config.horizon}  "
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
