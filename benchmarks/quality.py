"""``python -m benchmarks.quality``: the default LSTM against statistical baselines on real series.

    python -m benchmarks.quality [--series taylor,co2] [--output-dir results] [--timeout 900]

For each series of :mod:`benchmarks.datasets` the CSV is written as a user would have it, then

    python -m training.train --data <csv> --target <column> --output <dir> \\
        --allow-collapsed --allow-worse-than-baselines

runs as a subprocess, timed on the wall clock (the TensorFlow import included: what a user
waits for). Nothing else is set, so every other setting is the trainer's default.

Why the two overrides, and how the default verdict is still known. They only decide whether a
finished model is published or set aside in ``.rejected/``; they change nothing in training
(seeded, deterministic ops on CPU: the same run with and without them gave bit-identical
metrics here). So the run with them trains the very model a default run would, and its
``report.json`` holds the guard's verdict; the benchmark reads it rather than training twice.
The verdict is the trainer's own where the report has it (``guard``, and the baselines
section's ``guard_reasons``); from an older trainer it is derived from the report's numbers by
issue 14's rule: refused when collapsed, or when on validation the model does not beat
persistence, or seasonal naive at a period. A run refused even with the overrides (diverged)
counts as refused.

The table: test MAE of the LSTM divided by the test MAE of each baseline, on the same one-step
forecasts of the trainer's test windows (below 1: the LSTM is better). "best" is the baseline
with the lowest test MAE (chosen with hindsight: the hardest comparison). The baselines are
the trainer's, from ``report.json["baselines"]``; the benchmark recomputes the simple ones
(persistence, seasonal naive, persistence plus seasonal change) from the CSV on the same
points and says whether they agree. From a trainer that writes no baselines section, the
simple ones are the benchmark's own (at the dataset's documented periods) and the statistical
models are shown as not measured.

Targets, on every series: test MAE <= 0.9x persistence; <= 1.0x the best statistical model
(AutoETS, AutoTheta, MSTL, AutoARIMA); default training <= 120 s. A missed target is shown as
missed; one that could not be measured is shown as not measured.

Prediction intervals (a second table): the served conformal intervals' test coverage and mean
width at 80 % and 95 % (``report.json["intervals"]``, over every test window), next to the
other interval method's (the trainer scores both on every run) and AutoETS's own one-step
intervals on the same points (the AutoETS baseline's ``test_intervals``). Target: coverage
within +/-3 points of the level; AutoETS's width is the one to be narrower than.

How noisy that check is. Next to each coverage the table shows the calibration (validation)
windows ``n``, the test windows ``m`` and the chance that an exactly calibrated split-conformal
method lands within the +/-3 points on that many windows, computed exactly: on exchangeable
data the coverage given the calibration set is ``Beta(r, n + 1 - r)`` with
``r = ceil((n + 1) a / 100)`` (the trainer's rank, :func:`training.intervals.conformal_rank`),
so the number of covered test windows is Beta-Binomial (:func:`coverage_pmf`). On ~200
windows at 80 % that chance is only about 0.6. A last row pools every series' test windows
(covered / windows, so weighted by ``m``) with its own +/-3 check and its own chance, the
convolution of the series' distributions: the less noisy measurement. Each series keeps its own
met / MISSED as measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import DATASETS, Dataset, data_rows
from benchmarks.machine import machine_info
from training.cli import command_parser, positive
from training.intervals import conformal_rank

PROG = "python -m benchmarks.quality"
REPO = Path(__file__).resolve().parent.parent

OVERRIDES = ("--allow-collapsed", "--allow-worse-than-baselines")
TARGET_VS_PERSISTENCE = 0.9
TARGET_VS_BEST_STATISTICAL = 1.0
TARGET_SECONDS = 120.0
TARGET_COVERAGE_POINTS = 3.0
"""Test coverage of the served intervals within this many points of the nominal level."""
CHANCE_HEADING = f"P(within +/-{TARGET_COVERAGE_POINTS:g}) if exact"
"""The column of the chance an exactly calibrated method meets it (:func:`coverage_pmf`)."""

# The table's baseline columns, in order; baselines the report adds (AutoARIMA...) follow.
COLUMNS = (
    "persistence",
    "seasonal_naive",
    "persistence_seasonal_change",
    "AutoETS",
    "AutoTheta",
    "MSTL",
)
HEADINGS = {
    "persistence": "persistence",
    "seasonal_naive": "seasonal naive",
    "persistence_seasonal_change": "pers.+seas. change",
}
STATISTICAL = frozenset({"AutoETS", "AutoTheta", "MSTL", "AutoARIMA"})
_NATIVE_LOG = re.compile(r"^[EWIF]\d{4} ")


# --------------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRun:
    """One ``python -m training.train`` subprocess and what it left behind."""

    command: list[str]
    exit_code: int | None  # None: killed at the timeout
    seconds: float
    load_average_1m: float  # just before it started (the machine is shared)
    log: Path  # its stdout and stderr, interleaved
    report_path: Path | None
    report: dict[str, Any] | None
    published: bool  # the report is a published version's (not one under .rejected/)

    def last_lines(self, n: int = 8) -> list[str]:
        """The log's last ``n`` lines, without TensorFlow's C++ log lines (``E0000 00:00...``)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if line.strip() and not _NATIVE_LOG.match(line)][-n:]


def train(
    csv_path: Path, target: str, output: Path, *, timeout: float, extra: Sequence[str]
) -> TrainingRun:
    """Run the trainer with its defaults (plus the overrides and ``extra``) and time it."""
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--data",
        str(csv_path),
        "--target",
        target,
        "--output",
        str(output),
        *OVERRIDES,
        *extra,
    ]
    log = output.parent / "train.log"
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as handle:
        try:
            exit_code: int | None = subprocess.run(
                command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            exit_code = None
    seconds = time.perf_counter() - started
    report_path, published = find_report(output)
    report = json.loads(report_path.read_text()) if report_path else None
    return TrainingRun(command, exit_code, seconds, load, log, report_path, report, published)


def find_report(output: Path) -> tuple[Path | None, bool]:
    """The newest ``report.json`` under ``output``: a published version's, else a rejected one
    (``output/.rejected/<version>/``). Returns the path (None if there is none) and whether it
    is a published version's."""
    for base, published in ((output, True), (output / ".rejected", False)):
        if not base.is_dir():
            continue
        versions = sorted(
            p
            for p in base.iterdir()
            if not p.name.startswith(".") and (p / "report.json").is_file()
        )
        if versions:
            return versions[-1] / "report.json", published
    return None, False


# --------------------------------------------------------------------------------------------
# Baselines: the report's, checked against the benchmark's own simple ones
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """One baseline's one-step MAEs (target units) on the model's validation and test points."""

    name: str
    period: int | None
    statistical: bool
    val_mae: float | None
    test_mae: float | None
    seconds: float | None = None
    note: str = ""


@dataclass
class BaselineSet:
    """One series' baselines, where they come from, and what did not run or does not compare."""

    source: str  # "report", or "benchmark" when the report has no baselines section
    periods: tuple[int, ...]
    scores: list[Score]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def best(
        self, names: Sequence[str] | None = None, *, statistical: bool = False
    ) -> Score | None:
        """The score with the lowest test MAE, among ``names`` or the statistical models."""
        pool = [
            s
            for s in self.scores
            if s.test_mae is not None
            and (names is None or s.name in names)
            and (not statistical or s.statistical)
        ]
        return min(pool, key=lambda s: s.test_mae or 0.0) if pool else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "periods": list(self.periods),
            "scores": [asdict(s) for s in self.scores],
            "skipped": self.skipped,
            "notes": self.notes,
        }


def report_baselines(report: dict[str, Any]) -> BaselineSet | None:
    """The ``baselines`` section the trainer wrote (``training.baselines.Baselines``), if any."""
    section = report.get("baselines")
    if not isinstance(section, dict):
        return None
    scores = [
        Score(
            name=str(s["name"]),
            period=s.get("period"),
            statistical=bool(s.get("statistical", s["name"] in STATISTICAL)),
            val_mae=s.get("val_mae"),
            test_mae=s.get("test_mae"),
            seconds=s.get("seconds"),
            note=s.get("note", ""),
        )
        for s in section.get("scores", [])
    ]
    return BaselineSet(
        source="report",
        periods=tuple(section.get("periods", ())),
        scores=scores,
        skipped=dict(section.get("skipped", {})),
    )


def simple_baselines(
    csv_path: Path, target: str, report: dict[str, Any], periods: Sequence[int]
) -> tuple[list[Score], list[str]]:
    """Persistence, and seasonal naive (``y[t-p]``) and persistence plus the seasonal change
    (``y[t-1] + y[t-p] - y[t-p-1]``) at each period, computed here on the trainer's points;
    and notes on anything that keeps them from being comparable.

    The same points as the trainer's: the CSV is read by the trainer's own reader, split with
    its default fractions and forward-filled like it (training-split means before the first
    value); the validation and test points are the last ``n_windows`` rows of each split
    (horizon 1). The persistence MAE on these points must equal the report's.
    """
    from training.config import TrainConfig
    from training.data import chronological_split, impute
    from training.table import load_csv

    horizon = report.get("horizon", 1)
    if horizon != 1:
        return [], [f"horizon {horizon}: the benchmark scores one-step baselines only"]
    defaults = TrainConfig()
    series = load_csv(csv_path, target)
    n = len(series.values)
    split = chronological_split(
        n, val_fraction=defaults.val_fraction, test_fraction=defaults.test_fraction, min_rows=1
    )
    y = impute(series.values[:, [series.target_index]], split.train)[0][:, 0]
    metrics = report["metrics"]
    points = {
        name: np.arange(end - int(metrics[name]["n_windows"]), end)
        for name, end in (("val", split.val[1]), ("test", n))
    }

    def maes(forecast: np.ndarray) -> dict[str, float]:
        return {k: float(np.mean(np.abs(forecast[idx] - y[idx]))) for k, idx in points.items()}

    def score(name: str, period: int | None, forecast: np.ndarray) -> Score:
        mae = maes(forecast)
        return Score(name, period, False, mae["val"], mae["test"], 0.0)

    lagged = _shifted(y, 1)
    scores = [score("persistence", None, lagged)]
    notes = []
    for split_name, mine in maes(lagged).items():
        reported = metrics[split_name].get("persistence_mae")
        if reported is None or not np.isclose(mine, reported, rtol=1e-6):
            notes.append(
                f"{split_name} points differ from the trainer's: persistence MAE {mine:.6g} "
                f"here, {reported} in the report (the benchmark's baselines are not comparable)"
            )
    for p in periods:
        seasonal = _shifted(y, p)
        scores.append(score("seasonal_naive", p, seasonal))
        scores.append(
            score("persistence_seasonal_change", p, lagged + seasonal - _shifted(y, p + 1))
        )
    return scores, notes


def _shifted(y: np.ndarray, k: int) -> np.ndarray:
    """``y`` delayed by ``k`` steps: ``out[t] = y[t - k]`` (NaN for the first ``k``)."""
    out = np.full(len(y), np.nan)
    out[k:] = y[:-k]
    return out


def baselines_for(csv_path: Path, dataset: Dataset, report: dict[str, Any]) -> BaselineSet:
    """The report's baselines, checked against the benchmark's own simple ones; or, from a
    trainer that does not score baselines, the simple ones alone (at the dataset's documented
    periods), the statistical models then being not measured."""
    reported = report_baselines(report)
    periods = reported.periods if reported else dataset.periods
    try:
        mine, notes = simple_baselines(csv_path, dataset.target, report, periods)
    except Exception as exc:  # a report of another shape must not lose the other series
        mine, notes = [], [f"the benchmark's own baselines failed: {type(exc).__name__}: {exc}"]
    if reported is None:
        skipped = dict.fromkeys(
            sorted(STATISTICAL), "not measured: the report has no baselines section"
        )
        return BaselineSet("benchmark", dataset.periods, mine, skipped, notes)
    reported.notes.extend(notes)
    if mine and not notes:
        reported.notes.append(_cross_check(reported, mine))
    return reported


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and bool(np.isclose(a, b, rtol=1e-6, atol=1e-12))


def _cross_check(reported: BaselineSet, mine: Sequence[Score]) -> str:
    """Whether the report's simple baselines equal the benchmark's on the same points."""
    differ = []
    for score in mine:
        theirs = next(
            (s for s in reported.scores if (s.name, s.period) == (score.name, score.period)), None
        )
        if theirs is None or not (
            _same(theirs.val_mae, score.val_mae) and _same(theirs.test_mae, score.test_mae)
        ):
            differ.append(
                f"{score.name} {score.period or ''}: {score.val_mae:.6g}/{score.test_mae:.6g} "
                f"here, {theirs and (theirs.val_mae, theirs.test_mae)} in the report"
            )
    if differ:
        return "cross-check FAILED (val/test MAE): " + "; ".join(differ)
    return (
        "cross-check: the benchmark's own persistence, seasonal naive and persistence plus "
        "seasonal change equal the report's on validation and test"
    )


# --------------------------------------------------------------------------------------------
# One series' result
# --------------------------------------------------------------------------------------------


def default_verdict(run: TrainingRun, baselines: BaselineSet | None) -> dict[str, Any]:
    """Whether a run without the overrides would have published the model, why not, and the
    likely causes the trainer named."""
    if run.report is None:
        return {"refused": None, "source": None, "reasons": ["no model was trained"]}
    report = run.report
    reasons: list[str] = []
    causes: list[str] = []
    if not run.published:
        reasons.append("rejected even with the overrides (diverged)")
    guard = report.get("guard", {})
    if guard.get("collapsed"):
        reasons.extend(f"collapsed: {r}" for r in guard.get("reasons", []))
        causes.extend(guard.get("causes", []))
    section = report.get("baselines")
    if isinstance(section, dict) and "guard_reasons" in section:
        source = "the trainer's guard"
        reasons.extend(section["guard_reasons"])
        causes.extend(section.get("guard_causes", []))
    else:
        source = "derived by the benchmark from the report (issue 14's rule)"
        reasons.extend(_not_beaten(report, baselines))
    return {
        "refused": bool(reasons),
        "source": source,
        "reasons": reasons,
        "causes": causes,
        "guard": guard,
    }


def _not_beaten(report: dict[str, Any], baselines: BaselineSet | None) -> list[str]:
    """Issue 14's refusal rule on the report's numbers: on validation, the model's MAE is not
    below persistence's, or not below seasonal naive's at a period."""
    val = report.get("metrics", {}).get("val", {})
    lstm = val.get("mae")
    if lstm is None:
        return []
    rivals = [("persistence", val.get("persistence_mae"))]
    rivals += [
        (f"seasonal naive at {s.period}", s.val_mae)
        for s in (baselines.scores if baselines else [])
        if s.name == "seasonal_naive"
    ]
    return [
        f"{name} beat the model on validation: MAE {mae:.4g} vs the model's {lstm:.4g} "
        f"({lstm / mae:.2f}x)"
        for name, mae in rivals
        if mae and not lstm < mae
    ]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _target(value: float | None, limit: float, **extra: Any) -> dict[str, Any]:
    """A target's record: judged on the exact value, stored rounded."""
    return {
        "value": _rounded(value),
        "limit": limit,
        "met": None if value is None else value <= limit,
        **extra,
    }


def series_result(
    dataset: Dataset, rows: int, run: TrainingRun | None, csv_path: Path | None
) -> dict[str, Any]:
    """The JSON record of one series: the run, the baselines, the ratios and the targets."""
    record: dict[str, Any] = {"name": dataset.name, **dataset.describe(), "rows": rows}
    if run is None:
        return record
    report = run.report or {}
    record["training"] = {
        "command": shlex.join(["python", *run.command[1:]]),
        "exit_code": run.exit_code,
        "timed_out": run.exit_code is None,
        "wall_seconds": round(run.seconds, 1),
        "report_duration_seconds": report.get("training", {}).get("duration_seconds"),
        "load_average_1m_before": round(run.load_average_1m, 2),
        "published": run.published,
        "report": str(run.report_path) if run.report_path else None,
        "last_lines": run.last_lines(),
    }
    baselines = None
    if run.report is not None:
        if csv_path is not None:
            baselines = baselines_for(csv_path, dataset, report)
        else:
            baselines = report_baselines(report)
    test = report.get("metrics", {}).get("test", {})
    # The baselines section holds the model's MAE at its first horizon step, on the baselines'
    # points; with the default horizon of 1 it is the test MAE.
    section = report.get("baselines")
    lstm = (section.get("model_test_mae") if isinstance(section, dict) else None) or test.get("mae")
    record["model"] = {
        "window": report.get("window"),
        "transform": report.get("transform"),
        "data": report.get("data"),
        "val_mae": report.get("metrics", {}).get("val", {}).get("mae"),
        "test_mae": lstm,
        "test_windows": test.get("n_windows"),
    }
    record["baselines"] = baselines.to_dict() if baselines else None
    record["default_run"] = default_verdict(run, baselines)

    ratios: dict[str, float | None] = {}
    names = list(COLUMNS) + sorted(
        {s.name for s in baselines.scores} - set(COLUMNS) if baselines else set()
    )
    for name in names:
        best = baselines.best([name]) if baselines else None
        if name == "persistence" and best is None:
            ratios[name] = _ratio(lstm, test.get("persistence_mae"))
        else:
            ratios[name] = _ratio(lstm, best.test_mae if best else None)
    best_any = baselines.best() if baselines else None
    best_statistical = baselines.best(statistical=True) if baselines else None
    vs_statistical = _ratio(lstm, best_statistical.test_mae if best_statistical else None)
    record["ratios"] = {name: _rounded(value) for name, value in ratios.items()}
    record["best"] = {
        "name": best_any.name if best_any else None,
        "period": best_any.period if best_any else None,
        "ratio": _rounded(_ratio(lstm, best_any.test_mae if best_any else None)),
    }
    record["best_statistical"] = {
        "name": best_statistical.name if best_statistical else None,
        "ratio": _rounded(vs_statistical),
    }
    record["targets"] = {
        "vs_persistence": _target(ratios["persistence"], TARGET_VS_PERSISTENCE),
        "vs_best_statistical": _target(
            vs_statistical,
            TARGET_VS_BEST_STATISTICAL,
            model=record["best_statistical"]["name"],
        ),
        "training_seconds": _target(
            round(run.seconds, 1) if run.report is not None else None, TARGET_SECONDS
        ),
    }
    record["intervals"] = interval_result(report)
    if run.exit_code is None:  # killed: the time is a lower bound
        timed_out = run.seconds > TARGET_SECONDS
        record["targets"]["training_seconds"].update(
            value=f"> {run.seconds:.0f} (timed out)", met=False if timed_out else None
        )
    return record


def interval_result(report: dict[str, Any]) -> dict[str, Any] | None:
    """The intervals' test coverage and width per level: every method the trainer scored (the
    served one first), AutoETS's own on the same points, the width ratio and the coverage
    target. None from a trainer without intervals."""
    section = report.get("intervals")
    if not isinstance(section, dict):
        return None
    served = section.get("method")
    methods = dict(section.get("methods") or {served: section.get("test", [])})
    order = [served, *(m for m in methods if m != served)]
    baselines = report.get("baselines")
    ets = next(
        (
            s
            for s in (baselines.get("scores", []) if isinstance(baselines, dict) else [])
            if s.get("name") == "AutoETS"
        ),
        None,
    )
    ets_scores = {float(s["level"]): s for s in (ets or {}).get("test_intervals", [])}
    scores = section.get("scores") or [[]]
    calibration = len(scores[0])
    test_windows = report.get("metrics", {}).get("test", {}).get("n_windows")
    horizon = report.get("horizon", 1)
    levels = []
    for served_score in methods.get(served, []):
        level = float(served_score["level"])
        by_method = {
            m: next((s for s in methods[m] if float(s["level"]) == level), None) for m in order
        }
        theirs = ets_scores.get(level)
        levels.append(
            {
                "level": level,
                "methods": {
                    m: None if s is None else {k: s[k] for k in ("coverage", "mean_width")}
                    for m, s in by_method.items()
                },
                "AutoETS": None
                if theirs is None
                else {k: theirs[k] for k in ("coverage", "mean_width")},
                "width_vs_AutoETS": _rounded(
                    _ratio(served_score["mean_width"], theirs["mean_width"] if theirs else None)
                ),
                "coverage_target": {
                    "value": round(100 * served_score["coverage"], 2),
                    "limit": f"{level:g} +/- {TARGET_COVERAGE_POINTS:g}",
                    "met": within_target(100 * served_score["coverage"], level),
                    "p_within_if_exact": _rounded(
                        _chance(calibration or test_windows, test_windows, horizon, level)
                    ),
                },
            }
        )
    return {
        "method": served,
        "calibration_windows": calibration,
        "test_windows": test_windows,
        "horizon": horizon,
        "methods": order,
        "AutoETS_note": (ets or {}).get("note"),
        "levels": levels,
    }


# --------------------------------------------------------------------------------------------
# How noisy the coverage check is, and the coverage pooled over the series
# --------------------------------------------------------------------------------------------


def within_target(
    coverage_percent: float, level: float, points: float = TARGET_COVERAGE_POINTS
) -> bool:
    """Whether a coverage (percent) is within ``points`` of ``level``, bounds included, with a
    rounding allowance: 57 of 100 windows is within 3 points of 60 % although
    ``100 * (57 / 100)`` is 56.99999999999999."""
    return abs(coverage_percent - level) <= points + 1e-9


def coverage_pmf(calibration: int, test: int, level: float) -> np.ndarray:
    """``[test + 1]``: the probability that ``k`` of ``test`` windows fall inside split-conformal
    intervals at ``level`` (percent) calibrated on ``calibration`` windows, for ``k = 0..test``,
    when all the windows are exchangeable and the scores have no ties.

    The interval's coverage given the calibration set is the ``r``-th smallest of ``n`` uniforms,
    ``Beta(r, n + 1 - r)`` with the trainer's rank ``r = ceil((n + 1) a / 100)``, and ``k`` given
    it is Binomial: ``k`` is Beta-Binomial. With ``r > n`` the bound is infinite and every
    window is covered. Computed exactly, in logs (``math.lgamma``)."""
    if calibration < 1 or test < 1:
        raise ValueError(f"need windows: {calibration} calibration, {test} test")
    r = conformal_rank(calibration, level)
    if r > calibration:
        pmf = np.zeros(test + 1)
        pmf[-1] = 1.0
        return pmf
    a, b = float(r), float(calibration + 1 - r)
    lg = math.lgamma
    log_beta = lg(a) + lg(b) - lg(a + b)
    log_pmf = [
        lg(test + 1)
        - lg(k + 1)
        - lg(test - k + 1)
        + lg(k + a)
        + lg(test - k + b)
        - lg(test + a + b)
        - log_beta
        for k in range(test + 1)
    ]
    return np.exp(np.array(log_pmf))


def mass_within_target(
    pmf: np.ndarray, level: float, points: float = TARGET_COVERAGE_POINTS
) -> float:
    """The probability, under ``pmf`` over ``0..m`` covered windows, that the coverage
    ``k / m`` is within ``points`` of ``level``."""
    m = len(pmf) - 1
    return float(sum(p for k, p in enumerate(pmf) if within_target(100 * k / m, level, points)))


def chance_within_target(
    calibration: int, test: int, level: float, points: float = TARGET_COVERAGE_POINTS
) -> float:
    """The chance that an exactly calibrated split-conformal method, on exchangeable data with
    ``calibration`` and ``test`` windows, measures a test coverage within ``points`` of
    ``level``: the Beta-Binomial mass (:func:`coverage_pmf`) over the counts that pass."""
    return mass_within_target(coverage_pmf(calibration, test, level), level, points)


def _chance(calibration: int | None, test: int | None, horizon: int, level: float) -> float | None:
    """:func:`chance_within_target`, or None where it does not apply: windows unknown, or more
    than one horizon step (the coverage then averages correlated steps)."""
    if not calibration or not test or horizon != 1:
        return None
    return chance_within_target(calibration, test, level)


def _interval_windows(r: dict[str, Any]) -> tuple[int | None, int | None, bool]:
    """One series' calibration windows ``n`` and test windows ``m``, and whether ``n`` is the
    test windows standing in for a calibration count the record does not hold."""
    intervals = r.get("intervals") or {}
    test = intervals.get("test_windows") or (r.get("model") or {}).get("test_windows")
    m = int(test) if test else None
    calibration = intervals.get("calibration_windows")
    if calibration:
        return int(calibration), m, False
    return m, m, True


def _series_chance(r: dict[str, Any], level: float) -> float | None:
    """One series' chance within the target at ``level``, from what its record holds."""
    n, m, _ = _interval_windows(r)
    return _chance(n, m, (r.get("intervals") or {}).get("horizon", 1), level)


def _pooled(scores: Sequence[dict[str, float] | None], windows: Sequence[int]) -> float | None:
    """Covered windows summed over windows summed; None if a series has no score."""
    covered = 0
    for score, m in zip(scores, windows, strict=True):
        if score is None:
            return None
        covered += round(score["coverage"] * m)
    return covered / sum(windows)


def pooled_coverage(series: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level, the coverage over every series' test windows together: covered windows summed
    over windows summed (so each series weighs by its test windows), for the served method, the
    other ones and AutoETS (None where a series lacks one); the coverage target on the served
    one; and the chance an exactly calibrated method passes it, from the convolution of the
    series' Beta-Binomial distributions (the series are independent). Only one-step series whose
    windows are known count; ``series`` names them. Widths are not pooled (their units differ).
    """
    usable = []
    for r in series:
        intervals = r.get("intervals")
        n, m, _ = _interval_windows(r)
        if intervals and n and m and intervals.get("horizon", 1) == 1:
            usable.append((r["name"], intervals, n, m))
    if not usable:
        return []
    methods: list[str] = usable[0][1]["methods"]
    pooled = []
    for level in [lv["level"] for lv in usable[0][1]["levels"]]:
        names, entries, n_all, m_all = [], [], [], []
        for name, intervals, n, m in usable:
            entry = next((lv for lv in intervals["levels"] if lv["level"] == level), None)
            if entry is not None:
                names.append(name)
                entries.append(entry)
                n_all.append(n)
                m_all.append(m)
        coverage = {
            method: _pooled([e["methods"].get(method) for e in entries], m_all)
            for method in methods
        }
        pmf = np.ones(1)
        for n, m in zip(n_all, m_all, strict=True):
            pmf = np.convolve(pmf, coverage_pmf(n, m, level))
        served = coverage[methods[0]]
        pooled.append(
            {
                "level": level,
                "series": names,
                "calibration_windows": sum(n_all),
                "test_windows": sum(m_all),
                "methods": coverage,
                "AutoETS": _pooled([e["AutoETS"] for e in entries], m_all),
                "coverage_target": {
                    "value": None if served is None else round(100 * served, 2),
                    "limit": f"{level:g} +/- {TARGET_COVERAGE_POINTS:g}",
                    "met": None if served is None else within_target(100 * served, level),
                    "p_within_if_exact": _rounded(mass_within_target(pmf, level)),
                },
            }
        )
    return pooled


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _met(target: dict[str, Any], *, show: bool = False) -> str:
    """``met`` or ``MISSED`` (with the value and the model with ``show``), or ``not measured``."""
    if target["met"] is None:
        return "not measured"
    cell = "met" if target["met"] else "MISSED"
    if show:
        cell += f" ({_cell(target['value'])}x {_name(target.get('model'))})"
    return cell


def _name(baseline: str | None, period: int | None = None) -> str:
    name = HEADINGS.get(baseline or "-", baseline or "-")
    return f"{name} {period}" if period and period > 1 else name


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (plain strings), shared by the console and markdown."""
    extra = sorted({n for r in results["series"] for n in r.get("ratios", {})} - set(COLUMNS))
    columns = [*COLUMNS, *extra]
    header = [
        "series",
        "freq",
        "rows",
        *(HEADINGS.get(c, c) for c in columns),
        "best",
        "train s",
        "default run",
        f"<= {TARGET_VS_PERSISTENCE}x pers.",
        f"<= {TARGET_VS_BEST_STATISTICAL}x best stat.",
        f"<= {TARGET_SECONDS:.0f} s",
    ]
    rows = []
    for r in results["series"]:
        training = r.get("training", {})
        if not r.get("targets"):
            rows.append([r["name"], r["frequency"], str(r["rows"]), *["-"] * (len(header) - 3)])
            continue
        ratios = r["ratios"]
        best = r["best"]
        verdict = r["default_run"]["refused"]
        targets = r["targets"]
        seconds = targets["training_seconds"]["value"]
        rows.append(
            [
                r["name"],
                r["frequency"],
                str(r["rows"]),
                *(_cell(ratios.get(c)) for c in columns),
                f"{_cell(best['ratio'])} ({_name(best['name'], best['period'])})"
                if best["name"]
                else "-",
                seconds if isinstance(seconds, str) else f"{training['wall_seconds']:.0f}",
                {True: "refused", False: "published", None: "no model"}[verdict],
                _met(targets["vs_persistence"]),
                _met(targets["vs_best_statistical"], show=True),
                _met(targets["training_seconds"]),
            ]
        )
    return header, rows


def interval_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The intervals table: per level, each method's and AutoETS's test coverage / mean width,
    the chance an exactly calibrated method lands within the target on the series' windows
    (next to the served coverage), the served width divided by AutoETS's, and the coverage
    target; then a row of the coverages pooled over the series (:func:`pooled_coverage`)."""
    records = [r.get("intervals") for r in results["series"]]
    methods: list[str] = next((i["methods"] for i in records if i), ["absolute"])
    levels = next(([lv["level"] for lv in i["levels"]] for i in records if i), [80.0, 95.0])
    header = ["series", "calib. windows n", "test windows m"]
    for level in levels:
        named = [f"{level:g}% {m}{' (served)' if k == 0 else ''}" for k, m in enumerate(methods)]
        header += [named[0], f"{level:g}% {CHANCE_HEADING}", *named[1:]]
        header += [f"{level:g}% AutoETS", f"{level:g}% width / AutoETS"]
    header.append(f"coverage +/-{TARGET_COVERAGE_POINTS:g} pts")
    rows = []
    for r, intervals in zip(results["series"], records, strict=True):
        n, m, assumed = _interval_windows(r)
        if not intervals:
            rows.append([r["name"], "-", str(m or "-"), *["-"] * (len(header) - 3)])
            continue
        row = [r["name"], "-" if assumed else str(n), str(m or "-")]
        met = []
        for level in levels:
            entry = next((lv for lv in intervals["levels"] if lv["level"] == level), None)
            if entry is None:
                row += ["-"] * (len(methods) + 3)
                continue
            cells = [_coverage_width(entry["methods"].get(k)) for k in methods]
            chance = _chance_cell(_series_chance(r, level))
            if assumed and chance != "-":
                chance += " (n = m)"
            row += [cells[0], chance, *cells[1:]]
            row += [_coverage_width(entry["AutoETS"]), _cell(entry["width_vs_AutoETS"])]
            target = entry["coverage_target"]
            met.append(f"{level:g}% {'met' if target['met'] else 'MISSED'}")
        row.append(", ".join(met))
        rows.append(row)
    pooled = pooled_coverage(results["series"])
    if pooled:
        names = pooled[0]["series"]
        row = [
            f"pooled ({len(names)} series)",
            str(pooled[0]["calibration_windows"]),
            str(pooled[0]["test_windows"]),
        ]
        met = []
        for level in levels:
            entry = next((p for p in pooled if p["level"] == level), None)
            if entry is None:
                row += ["-"] * (len(methods) + 3)
                continue
            cells = [_percent(entry["methods"].get(k)) for k in methods]
            target = entry["coverage_target"]
            row += [cells[0], _chance_cell(target["p_within_if_exact"]), *cells[1:]]
            row += [_percent(entry["AutoETS"]), "-"]
            if target["met"] is not None:
                met.append(f"{level:g}% {'met' if target['met'] else 'MISSED'}")
        row.append(", ".join(met) or "-")
        rows.append(row)
    return header, rows


NOISE_NOTE = (
    f"*{CHANCE_HEADING}*: the chance that an exactly calibrated split-conformal method, on "
    "exchangeable data with these n calibration and m test windows, measures a test coverage "
    f"within {TARGET_COVERAGE_POINTS:g} points of the level (exact Beta-Binomial: the coverage "
    "given the calibration set is Beta(r, n + 1 - r), r = ceil((n + 1) level / 100)); well "
    "below 1, one series' check is a noisy measurement. *pooled*: every series' test windows "
    "together (covered / windows, so each series weighs by m; coverage only, widths are in each "
    "series' units), with its own target check and chance: the less noisy measurement. Each "
    "series' met / MISSED stays as measured."
)


def _chance_cell(p: float | None) -> str:
    if p is None:
        return "-"
    if p >= 0.995:
        return "> 0.99"
    if p < 0.005:
        return "< 0.01"
    return f"{p:.2f}"


def _percent(coverage: float | None) -> str:
    return "-" if coverage is None else f"{100 * coverage:.1f}%"


def _coverage_width(score: dict[str, float] | None) -> str:
    if not score:
        return "-"
    return f"{100 * score['coverage']:.1f}% / {score['mean_width']:.4g}"


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def console_table(results: dict[str, Any]) -> str:
    header, rows = table_rows(results)
    table = _aligned(header, rows)
    if any(r.get("intervals") for r in results["series"]):
        table += "\n\nPrediction intervals on the test split (coverage / mean width):\n"
        table += _aligned(*interval_rows(results))
        table += "\n\n" + NOISE_NOTE.replace("*", "")
    return table


def markdown(results: dict[str, Any]) -> str:
    header, rows = table_rows(results)
    machine = results["machine"]
    out = [
        "# Quality benchmark: the default LSTM against baselines on real series",
        "",
        f"Command: `{results['command']}`  ",
        f"Run: {results['started_at']} to {results['finished_at']}, commit "
        f"{results['git']['commit']}"
        + (
            f" with uncommitted changes in {', '.join(results['git']['uncommitted_training'])}"
            if results["git"]["uncommitted_training"]
            else ""
        )
        + "  ",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, "
        f"{machine['memory_gib']} GiB, load {machine['load_average_1m_at_start']} at start; "
        f"TensorFlow {machine['tensorflow']}, statsforecast {results['statsforecast']}",
        "",
        "Each series is trained with "
        f"`{results['training_command']}` (every other setting at its default; the two "
        "overrides only keep a refused model's report, and *default run* says what a run "
        "without them would have done).",
    ]
    if results["extra_training_args"]:
        out.append(
            "\n**Not the defaults:** extra training flags "
            f"`{shlex.join(results['extra_training_args'])}`."
        )
    out += [
        "",
        "Cells: the LSTM's test MAE divided by each baseline's, one-step forecasts on the same "
        "test points (below 1: the LSTM is better; *best*: the baseline with the lowest test "
        "MAE). *train s*: wall seconds of the training command.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    if any(r.get("intervals") for r in results["series"]):
        iheader, irows = interval_rows(results)
        out += [
            "## Prediction intervals",
            "",
            "Cells: test coverage / mean width (target units) of 80 % and 95 % intervals: the "
            "LSTM's split conformal intervals calibrated on the validation split, with the "
            "served method and the other one, and AutoETS's own one-step intervals on the same "
            "points (its variance re-estimated causally from the errors before each point). "
            "*width / AutoETS*: the served width divided by AutoETS's (below 1: narrower). "
            f"Target: coverage within {TARGET_COVERAGE_POINTS:g} points of the level.",
            "",
            NOISE_NOTE,
            "",
            "| " + " | ".join(iheader) + " |",
            "|" + "|".join("---" for _ in iheader) + "|",
            *("| " + " | ".join(row) + " |" for row in irows),
            "",
        ]
    out += [
        "## Series",
        "",
        "| series | source | frequency | rows | target | periods | character |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["series"]:
        periods = ", ".join(map(str, r["periods"])) or "none"
        out.append(
            f"| {r['name']} | {r['source']} | {r['frequency']} ({r['step']}) | {r['rows']} | "
            f"{r['target']} | {periods} | {r['character']} |"
        )
    out += ["", "## Notes", ""]
    for r in results["series"]:
        out.append(f"- **{r['name']}**")
        out.extend(f"  {'  ' * _depth(note)}- {note.strip()}" for note in series_notes(r))
    return "\n".join(out) + "\n"


def _depth(note: str) -> int:
    """A note's nesting: each two leading spaces go one level down."""
    return (len(note) - len(note.lstrip(" "))) // 2


def series_notes(r: dict[str, Any]) -> list[str]:
    """What a reader of the table needs to know about one series' row."""
    notes: list[str] = []
    training = r.get("training")
    if training is None:
        return ["not trained"]
    if training["timed_out"]:
        notes.append(f"training timed out after {training['wall_seconds']:.0f} s")
    elif training["exit_code"] != 0:
        notes.append(
            f"training exited {training['exit_code']}: {' / '.join(training['last_lines'][-3:])}"
        )
    model = r.get("model", {})
    if model.get("window") is not None:
        transform = model.get("transform") or {}
        lags = "".join(f", lag {lag}" for lag in transform.get("lags", []))
        steps = f" (the LSTM runs over {transform['steps']}{lags})" if "steps" in transform else ""
        notes.append(
            f"window {model['window']} rows{steps}; {model.get('test_windows')} test windows"
        )
    verdict = r.get("default_run", {})
    if verdict.get("refused"):
        notes.append(f"a default run would refuse it ({verdict['source']}):")
        notes.extend(f"  why: {reason}" for reason in verdict["reasons"])
        notes.extend(f"  likely cause: {cause}" for cause in verdict.get("causes", []))
    baselines = r.get("baselines")
    if baselines:
        periods = ", ".join(map(str, baselines["periods"])) or "none"
        if baselines["source"] == "report":
            notes.append(f"baselines from the trainer's report.json; periods detected: {periods}")
        else:
            notes.append(
                "baselines computed by the benchmark (the report has no baselines section), "
                f"at the dataset's documented periods: {periods}"
            )
        notes.extend(
            f"baseline {name} skipped: {why}" for name, why in baselines["skipped"].items()
        )
        notes.extend(f"baselines: {note}" for note in baselines["notes"])
    intervals = r.get("intervals")
    if intervals:
        notes.append(
            f"intervals: split conformal ({intervals['method']}) on "
            f"{intervals['calibration_windows']} validation windows; AutoETS: "
            f"{intervals['AutoETS_note'] or 'not scored'}"
        )
        for entry in intervals["levels"]:
            target = entry["coverage_target"]
            if not target["met"]:
                n, m, assumed = _interval_windows(r)
                chance = _series_chance(r, entry["level"])
                odds = (
                    ""
                    if chance is None
                    else f" (an exactly calibrated method lands within it with probability "
                    f"{chance:.2f} on {n} calibration and {m} test windows"
                    f"{', n = m assumed' if assumed else ''})"
                )
                notes.append(
                    f"target coverage at {entry['level']:g}% MISSED: {target['value']:.1f}% "
                    f"outside {target['limit']}{odds}"
                )
    for key, target in r.get("targets", {}).items():
        value, limit = target["value"], target["limit"]
        if target["met"] is False:
            unit = "s" if key == "training_seconds" else "x"
            shown = value if isinstance(value, str) else f"{value:.2f}{unit}"
            what = f" {target['model']}" if target.get("model") else ""
            notes.append(f"target {key} MISSED: {shown}{what} > {limit:g}{unit}")
        elif target["met"] is None:
            notes.append(f"target {key} not measured")
    return notes


def _git() -> dict[str, Any]:
    """The commit, and the trainer's files that differ from it (others may be editing)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "training") or ""
    return {
        "commit": (git("rev-parse", "--short", "HEAD") or "unknown").strip(),
        "uncommitted_training": [line[3:] for line in status.splitlines() if line.strip()],
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _series_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown series {', '.join(unknown) or '(none)'}; choose from {', '.join(DATASETS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        PROG,
        "Train the default LSTM on public real series (and the synthetic one) and compare its "
        "test MAE with persistence, seasonal naive, persistence plus seasonal change, AutoETS, "
        "AutoTheta and MSTL; print the table and write it as JSON and markdown.",
        epilog="Series: "
        + "; ".join(
            f"{d.name} ({d.frequency}, {d.source.split(' ')[0]})" for d in DATASETS.values()
        )
        + ". Exit codes: 0 every series was measured (whether its targets are met or not); 1 a "
        "training run left no report; 2 bad flags.",
    )
    parser.add_argument(
        "--series",
        type=_series_names,
        default=",".join(DATASETS),
        help="comma-separated subset of the series, in this order",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("results"),
        help="where quality.json and quality.md are written",
    )
    parser.add_argument(
        "--keep-artifacts",
        action="store_true",
        help="keep each series' CSV, training log and trained version under "
        "<output-dir>/quality-artifacts/<series>/, instead of in a temporary directory",
    )
    parser.add_argument(
        "--timeout",
        type=positive(float),
        default=900.0,
        help="seconds before a training run is killed (and its row shows the timeout)",
    )
    parser.add_argument(
        "--train-args",
        default="",
        help="extra flags appended to every training command, as one shell-quoted string "
        "(e.g. --train-args='--epochs 2 --units 8'); for smoke tests only: the results are "
        "then not the defaults' and say so",
    )
    return parser


def run_benchmark(
    names: Sequence[str], work: Path, *, timeout: float, extra: Sequence[str]
) -> list[dict[str, Any]]:
    """Write, train and score each series in turn, with a progress line before and after."""
    results = []
    for i, name in enumerate(names, start=1):
        dataset = DATASETS[name]
        directory = work / name
        csv_path = dataset.write_csv(directory)
        rows = data_rows(csv_path)
        prefix = f"[{i}/{len(names)}] {name}"
        print(
            f"{prefix}: {dataset.frequency}, {rows} rows, target {dataset.target}; training...",
            file=sys.stderr,
            flush=True,
        )
        run = train(csv_path, dataset.target, directory / "artifacts", timeout=timeout, extra=extra)
        record = series_result(dataset, rows, run, csv_path)
        results.append(record)
        print(f"{prefix}: {_progress_summary(record)}", file=sys.stderr, flush=True)
    return results


def _progress_summary(record: dict[str, Any]) -> str:
    training = record["training"]
    if training["exit_code"] is None:
        head = f"timed out after {training['wall_seconds']:.0f} s"
    else:
        head = f"trained in {training['wall_seconds']:.1f} s (exit {training['exit_code']})"
    ratios = record.get("ratios", {})
    if ratios.get("persistence") is None:
        return head + "; no test MAE"
    best = record["best"]
    source = (record.get("baselines") or {}).get("source", "nowhere")
    verdict = {True: "refused", False: "published", None: "no model"}
    return (
        f"{head}; test MAE {ratios['persistence']:.2f}x persistence, "
        f"{_cell(best['ratio'])}x the best baseline ({_name(best['name'], best['period'])}); "
        f"baselines from the {source}; default run: {verdict[record['default_run']['refused']]}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = shlex.split(args.train_args)
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = machine_info()
    if args.keep_artifacts:
        work = args.output_dir / "quality-artifacts"
        work.mkdir(parents=True, exist_ok=True)
        series = run_benchmark(args.series, work, timeout=args.timeout, extra=extra)
    else:
        with tempfile.TemporaryDirectory(prefix="quality-") as scratch:
            series = run_benchmark(args.series, Path(scratch), timeout=args.timeout, extra=extra)
    command = " ".join([PROG, shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    results = {
        "command": command,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": _git(),
        "machine": machine,
        "statsforecast": metadata.version("statsforecast"),
        "training_command": "python -m training.train --data <csv> --target <column> "
        "--output <dir> " + " ".join(OVERRIDES),
        "extra_training_args": extra,
        "targets": {
            "vs_persistence": TARGET_VS_PERSISTENCE,
            "vs_best_statistical": TARGET_VS_BEST_STATISTICAL,
            "training_seconds": TARGET_SECONDS,
        },
        "series": series,
        "intervals_pooled": pooled_coverage(series),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / "quality.json"
    md_path = args.output_dir / "quality.md"
    json_path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown(results))
    print(console_table(results))
    print(f"\nresults: {json_path} and {md_path}")
    if args.keep_artifacts:
        print(f"artifacts: {args.output_dir / 'quality-artifacts'}")
    return 0 if all(r.get("model", {}).get("test_mae") is not None for r in series) else 1


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
