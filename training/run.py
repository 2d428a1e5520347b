"""Fit, evaluate, judge and publish: the TensorFlow half of ``python -m training.train``."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import joblib
import keras
import numpy as np
import sklearn
import tensorflow as tf

from monitoring.calibration import calibrate
from training import guard
from training.artifacts import MODEL_FILE, SCALER_FILE, new_version_name, publish
from training.callbacks import EpochProgress, GradientNorms
from training.distribute import fit_multiworker, is_chief, make_strategy, split_cpu
from training.model import build_model, configure_devices
from training.predict import predict_windows
from training.prepare import Prepared
from training.reference import input_reference
from training.report import plot_report
from training.transform import future_targets, sliding_windows, window_ends

log = logging.getLogger("training")

EXIT_OK, EXIT_COLLAPSED = 0, 3


def fit_and_publish(prepared: Prepared, args: argparse.Namespace, argv_for_record) -> int:
    started = time.perf_counter()
    split_cpu(args.cpu_devices)
    strategy = make_strategy(args.distribute)
    device = configure_devices()
    keras.utils.set_random_seed(args.seed)
    if args.distribute == "none":
        tf.config.experimental.enable_op_determinism()

    transform = prepared.transform
    series = prepared.series
    x_train, y_train, _ = prepared.pairs["train"]
    x_val, y_val, _ = prepared.pairs["val"]
    log.info(
        "data: %d rows x %d features (%s), target %s, %d imputed cells; windows train/val/test "
        "%d/%d/%d; window %d, horizon %d, target mode %s%s",
        len(series.values),
        len(series.feature_names),
        ",".join(series.feature_names),
        series.target,
        prepared.n_imputed,
        len(x_train),
        len(x_val),
        len(prepared.pairs["test"][0]),
        args.window,
        args.horizon,
        args.target_mode,
        ", NO SCALING" if args.no_scaling else "",
    )

    with strategy.scope():
        model = build_model(
            window=args.window,
            n_features=len(series.feature_names),
            horizon=args.horizon,
            units=args.units,
            dropout=args.dropout,
            l2=args.l2,
            learning_rate=args.learning_rate,
            clipnorm=args.clipnorm,
        )
    grads = GradientNorms(x_train, y_train)
    callbacks = [
        grads,
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=args.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, args.patience // 2), min_lr=1e-5
        ),
        EpochProgress(args.epochs),
    ]
    if args.distribute == "multiworker":
        history = fit_multiworker(
            model,
            strategy,
            (x_train, y_train),
            (x_val, y_val),
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            callbacks=callbacks,
        )
        model = _unreplicated(model, args, len(series.feature_names))
    else:
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=args.epochs,
            batch_size=args.batch_size,
            shuffle=True,  # shuffles windows inside the training split only
            verbose=0,
            callbacks=callbacks,
        ).history
    history = {k: [float(v) for v in vals] for k, vals in history.items()}
    epochs_run = len(history.get("loss", []))
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else 0

    evaluations = {name: _evaluate_split(model, prepared, name) for name in ("val", "test")}
    metrics = {name: ev["metrics"] for name, ev in evaluations.items()}
    verdict = guard.judge(metrics, args.std_ratio_threshold)
    if verdict.collapsed:
        input_mean = x_train.reshape(-1, x_train.shape[-1]).mean(axis=0)
        input_std = x_train.reshape(-1, x_train.shape[-1]).std(axis=0)
        verdict.causes = guard.diagnose(
            input_mean=input_mean,
            input_std=input_std,
            feature_names=series.feature_names,
            grad_history=grads.history,
            epochs_run=epochs_run,
            max_epochs=args.epochs,
            best_epoch=best_epoch,
            dropout=args.dropout,
            units=args.units,
            target_std=float(np.std(prepared.splits["train"][:, transform.target_index])),
        )
    vanishing = guard.vanishing_layers(grads.history)

    duration = time.perf_counter() - started
    val_raw_pred = evaluations["val"]["raw_pred"]
    scaled_train = transform.scale(prepared.splits["train"])
    reference = input_reference(scaled_train, prepared.splits["train"], series.feature_names)
    calibration_started = time.perf_counter()
    monitoring = calibrate(
        val_raw_pred,
        x_val[:, -1, :].astype(np.float64),
        feature_names=list(series.feature_names),
        reference=reference,
    )
    log.info(
        "calibrated the collapse/drift detectors on validation replay in %.1fs "
        "(collapse threshold %.3g)",
        time.perf_counter() - calibration_started,
        monitoring["collapse"]["threshold"],
    )
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "feature_names": list(series.feature_names),
        "target": series.target,
        "window": args.window,
        "horizon": args.horizon,
        "scaling": not args.no_scaling,
        "transform": transform.to_manifest(),
        "imputation": {
            "method": "forward-fill, then training-split mean for leading gaps",
            "train_means": [float(v) for v in prepared.train_means],
        },
        "reference": {
            "features": reference,
            "validation_prediction_std": [float(v) for v in val_raw_pred.std(axis=0)],
            "validation_prediction_std_target_units": [
                float(v) for v in evaluations["val"]["forecast"].std(axis=0)
            ],
        },
        "monitoring": monitoring,
        "metrics": {name: m.to_dict() for name, m in metrics.items()},
        "guard": {
            "collapsed": verdict.collapsed,
            "std_ratio_threshold": args.std_ratio_threshold,
            "reasons": verdict.reasons,
            "causes": verdict.causes,
            "vanishing_gradient_layers": vanishing,
            "published_despite_collapse": verdict.collapsed and args.allow_collapsed,
        },
        "training": {
            "argv": list(argv_for_record),
            "units": list(args.units),
            "dropout": args.dropout,
            "l2": args.l2,
            "epochs_max": args.epochs,
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "clipnorm": args.clipnorm,
            "seed": args.seed,
            "device": device,
            "duration_seconds": round(duration, 2),
            "windows": {name: int(len(p[0])) for name, p in prepared.pairs.items()},
            "imputed_cells": prepared.n_imputed,
        },
        "environment": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "scikit_learn": sklearn.__version__,
        },
    }
    report = {**manifest, "history": history, "gradient_norms": grads.history}
    version = new_version_name()
    title = (
        f"{version}  target={series.target}  window={args.window} horizon={args.horizon}  "
        f"test MAE {metrics['test'].mae:.4g} vs persistence {metrics['test'].persistence_mae:.4g}"
    )

    def write_reports(directory: Path) -> None:
        test = evaluations["test"]
        plot_report(
            directory / "report.png",
            title=title,
            truth=test["truth"][:, 0],
            forecast=test["forecast"][:, 0],
            persistence=test["last_value"],
            history=history,
            grad_norms=grads.history,
        )
        (directory / "report.json").write_text(
            json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
        )

    diverged = not all(np.isfinite(v) for m in metrics.values() for v in m.to_dict().values())
    if diverged:
        verdict.causes.insert(
            0,
            "training diverged: non-finite loss or predictions (lower "
            "--learning-rate or --clipnorm)",
        )
    rejected_run = diverged or (verdict.collapsed and not args.allow_collapsed)
    if not is_chief():
        print(
            f"worker finished ({'rejected' if rejected_run else 'accepted'}); the chief "
            "publishes the artifacts"
        )
        return EXIT_COLLAPSED if rejected_run else EXIT_OK
    if rejected_run:
        rejected = args.output / ".rejected" / version
        rejected.mkdir(parents=True, exist_ok=True)
        write_reports(rejected)
        print(
            "REJECTED: the model is collapsed (near-constant output); nothing was published.",
            file=sys.stderr,
        )
        for reason in verdict.reasons:
            print(f"  why: {reason}", file=sys.stderr)
        for cause in verdict.causes:
            print(f"  likely cause: {cause}", file=sys.stderr)
        override = "" if diverged else " (override with --allow-collapsed)"
        print(f"  report: {rejected}/report.png{override}", file=sys.stderr)
        return EXIT_COLLAPSED

    def write_version(directory: Path) -> dict:
        model.save(directory / MODEL_FILE)
        joblib.dump(transform.scaler, directory / SCALER_FILE)
        write_reports(directory)
        return manifest

    path = publish(args.output, version, write_version)
    if verdict.collapsed:
        print(
            f"WARNING: published a collapsed model because of --allow-collapsed: "
            f"{'; '.join(verdict.reasons)}",
            file=sys.stderr,
        )
    test = metrics["test"]
    print(
        f"published {path} in {duration:.0f}s: test MAE {test.mae:.4g} vs persistence "
        f"{test.persistence_mae:.4g} ({test.mae_vs_persistence:.2f}x)"
    )
    return EXIT_OK


def _unreplicated(model, args: argparse.Namespace, n_features: int):
    """A plain copy of a multi-worker model for evaluation and saving (Keras 3 cannot predict
    under MultiWorkerMirroredStrategy either)."""
    plain = build_model(
        window=args.window,
        n_features=n_features,
        horizon=args.horizon,
        units=args.units,
        dropout=args.dropout,
        l2=args.l2,
        learning_rate=args.learning_rate,
        clipnorm=args.clipnorm,
    )
    plain.set_weights(model.get_weights())
    return plain


def _finite(value):
    """JSON has no NaN/Infinity: report non-finite numbers as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _evaluate_split(model, prepared: Prepared, name: str) -> dict:
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
    return {
        "metrics": metrics,
        "forecast": forecast,
        "raw_pred": raw_pred,
        "truth": truth,
        "last_value": last_value,
    }
