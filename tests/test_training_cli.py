"""``python -m training.train`` end to end: flags, errors, the collapse guard and publication."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest

from training.artifacts import list_versions
from training.data import synthetic_series
from training.train import main

ALL_FLAGS = (
    "--data",
    "--target",
    "--features",
    "--time-column",
    "--synthetic-steps",
    "--val-fraction",
    "--test-fraction",
    "--window",
    "--horizon",
    "--target-mode",
    "--no-scaling",
    "--units",
    "--dropout",
    "--l2",
    "--epochs",
    "--batch-size",
    "--learning-rate",
    "--clipnorm",
    "--patience",
    "--seed",
    "--std-ratio-threshold",
    "--allow-collapsed",
    "--interval-method",
    "--output",
)


@pytest.fixture
def mixed_csv(tmp_path):
    """A CSV with a text column ``site`` and an all-blank column ``spare``."""
    path = tmp_path / "mixed.csv"
    lines = ["load,temp,site,spare"] + [f"{i},{i % 7},north," for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def trended_csv(tmp_path):
    """1200 hourly rows, shuffled: load = trend + daily cycle + temperature response + noise.

    The columns are ``time`` (ISO-8601), ``load`` (the target), ``temp`` (a correlated
    exogenous input) and ``site`` (text, excluded with --features).
    """
    rng = np.random.default_rng(3)
    n = 1200
    t = np.arange(n)
    temp = 15 + 6 * np.sin(2 * np.pi * (t - 9) / 24) + rng.normal(0, 0.5, n)
    load = 200 + 0.08 * t + 12 * np.sin(2 * np.pi * (t - 8) / 24) + 0.8 * (temp - 15)
    load += rng.normal(0, 0.6, n)
    start = datetime(2024, 1, 1)
    path = tmp_path / "trended.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "load", "temp", "site"])
        for i in rng.permutation(n):
            stamp = (start + timedelta(hours=int(i))).isoformat()
            writer.writerow([stamp, f"{load[i]:.4f}", f"{temp[i]:.4f}", "north"])
    return path


def read_manifest(version_dir) -> dict:
    return json.loads((version_dir / "manifest.json").read_text())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ---- flags and usage errors -----------------------------------------------------------------


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])

    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for flag in ALL_FLAGS:
        assert flag in out, flag
    assert "Exit codes" in out


@pytest.mark.slow
def test_module_help_exits_zero():
    done = subprocess.run(
        [sys.executable, "-m", "training.train", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0
    assert "--allow-collapsed" in done.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--window", "0"], "--window: must be > 0, got 0"),
        (["--units", "a,b"], "--units: expected comma-separated integers, got 'a,b'"),
        (["--units", "16,0"], "--units: every layer needs at least 1 unit"),
        (["--dropout", "1.5"], "--dropout: must be in [0, 1), got 1.5"),
        (["--target-mode", "ratio"], "--target-mode: invalid choice"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flag_exits_2_with_one_line(capsys, argv, expected):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)

    assert excinfo.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--data", "x.csv"], "--data requires --target"),
        (["--target", "load"], "--target/--features/--time-column need --data"),
    ],
)
def test_inconsistent_data_flags_exit_2(capsys, argv, expected):
    assert main(argv) == 2

    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert expected in lines[0]


def test_missing_data_file_exits_2(capsys, tmp_path):
    missing = tmp_path / "absent.csv"

    assert main(["--data", str(missing), "--target", "load"]) == 2

    lines = error_lines(capsys.readouterr().err)
    assert lines == [f"python -m training.train: error: --data: no such file: {missing}"]


def test_bad_columns_exit_2_naming_them(capsys, mixed_csv, tmp_path):
    argv = ["--data", str(mixed_csv), "--target", "load", "--features", "temp,site,spare"]
    exit_code = main([*argv, "--output", str(tmp_path)])

    assert exit_code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1
    assert "non-numeric column(s): site" in lines[0]
    assert "entirely empty column(s): spare" in lines[0]
    assert list_versions(tmp_path) == []


def test_too_short_data_exits_2(capsys, tmp_path):
    exit_code = main(["--synthetic-steps", "200", "--window", "48", "--output", str(tmp_path)])

    assert exit_code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "needs at least 50" in lines[0]


def test_output_that_is_a_file_exits_2(capsys, tmp_path):
    output = tmp_path / "artifacts"
    output.write_text("not a directory")

    exit_code = main(["--synthetic-steps", "300", "--window", "8", "--output", str(output)])

    assert exit_code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "exists and is not a directory" in lines[0]


# ---- the collapse guard, end to end ----------------------------------------------------------


def test_synthetic_series_is_in_the_tens_of_thousands(tiny_training_args):
    steps = int(tiny_training_args[tiny_training_args.index("--synthetic-steps") + 1])

    load = synthetic_series(steps).values[:, 0]

    assert 10_000 < np.nanmin(load) and np.nanmax(load) < 100_000


@pytest.mark.slow
def test_default_model_is_accepted_and_published(trained_output, trained_version):
    manifest = read_manifest(trained_version)

    assert list_versions(trained_output) == [trained_version]
    assert manifest["guard"]["collapsed"] is False
    assert manifest["guard"]["reasons"] == []


@pytest.mark.slow
def test_no_scaling_model_is_rejected(capsys, tmp_path, tiny_training_args):
    exit_code = main([*tiny_training_args, "--no-scaling", "--output", str(tmp_path)])

    assert exit_code == 3
    assert list_versions(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == [".rejected"]
    (rejected,) = (tmp_path / ".rejected").iterdir()
    assert not (rejected / "model.keras").exists()
    report = json.loads((rejected / "report.json").read_text())
    assert report["guard"]["collapsed"] is True
    assert report["metrics"]["val"]["std_ratio"] < 0.1
    err = capsys.readouterr().err
    assert "REJECTED" in err
    assert "likely cause: unscaled inputs" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_allow_collapsed_publishes_no_scaling_model(capsys, tmp_path, tiny_training_args):
    argv = [*tiny_training_args, "--no-scaling", "--allow-collapsed", "--output", str(tmp_path)]

    exit_code = main(argv)

    assert exit_code == 0
    (version,) = list_versions(tmp_path)
    manifest = read_manifest(version)
    assert manifest["scaling"] is False
    assert manifest["guard"]["collapsed"] is True
    assert manifest["guard"]["published_despite_collapse"] is True
    assert any(
        r.startswith("val prediction-std/target-std ratio") for r in manifest["guard"]["reasons"]
    )
    assert any(c.startswith("unscaled inputs") for c in manifest["guard"]["causes"])
    captured = capsys.readouterr()
    assert "WARNING: published a collapsed model" in captured.err
    assert captured.out.splitlines()[-1].startswith(f"published {version} ")


@pytest.mark.slow
def test_diverged_training_is_never_published(capsys, tmp_path, tiny_training_args):
    argv = [
        *tiny_training_args,
        "--learning-rate",
        "1e30",
        "--clipnorm",
        "1e30",
        "--allow-collapsed",
        "--output",
        str(tmp_path),
    ]

    exit_code = main(argv)

    assert exit_code == 3
    assert list_versions(tmp_path) == []
    (rejected,) = list((tmp_path / ".rejected").iterdir())
    report = json.loads((rejected / "report.json").read_text())  # valid JSON: no bare NaN
    assert report["metrics"]["val"]["mae"] is None
    err = capsys.readouterr().err
    assert "likely cause: training diverged" in err
    assert "Traceback" not in err


# ---- your own data --------------------------------------------------------------------------


@pytest.mark.slow
def test_csv_with_trend_beats_persistence(capsys, tmp_path, trended_csv):
    output = tmp_path / "artifacts"
    argv = [
        "--data",
        str(trended_csv),
        "--target",
        "load",
        "--features",
        "load,temp",
        "--time-column",
        "time",
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
        "--output",
        str(output),
    ]
    with trended_csv.open() as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["time"])
    load = np.array([float(row["load"]) for row in rows])
    n_test = round(len(load) * 0.15)
    n_train = len(load) - 2 * n_test
    assert load[-n_test:].max() > load[:n_train].max()

    exit_code = main(argv)

    assert exit_code == 0
    (version,) = list_versions(output)
    manifest = read_manifest(version)
    assert manifest["feature_names"] == ["load", "temp"]
    test = manifest["metrics"]["test"]
    assert test["mae"] < test["persistence_mae"]
    last_line = capsys.readouterr().out.splitlines()[-1]
    match = re.fullmatch(
        rf"published {re.escape(str(version))} in \d+s: "
        r"test MAE (\S+) vs persistence (\S+) \((\S+)x\)",
        last_line,
    )
    assert match, last_line
    assert float(match[1]) == pytest.approx(test["mae"], rel=1e-3)
    assert float(match[2]) == pytest.approx(test["persistence_mae"], rel=1e-3)
    assert math.isclose(float(match[3]), test["mae_vs_persistence"], abs_tol=0.01)


# ---- reproducibility ------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_reproduces_metrics(tmp_path, tiny_training_args, trained_version):
    assert main([*tiny_training_args, "--output", str(tmp_path)]) == 0

    (again,) = list_versions(tmp_path)
    assert read_manifest(again)["metrics"] == read_manifest(trained_version)["metrics"]
