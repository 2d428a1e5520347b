"""CSVs as users have them (training/table.py, training/timeaxis.py, training/prepare.py): the
time axis found without flags, regular steps and gaps, unusable columns, and each bad input
refused in one line with exit code 2 and nothing published."""

from __future__ import annotations

import numpy as np
import pytest

from training.artifacts import list_versions
from training.data import DataError
from training.prepare import prepare
from training.table import load_csv
from training.train import main


@pytest.fixture
def csv_file(tmp_path):
    """Write text (or bytes) to a CSV file and return its path."""

    def write(content: str | bytes, name: str = "data.csv"):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


def weekly(n: int, start_day: int = 5) -> list[str]:
    """``n`` weekly ISO dates from 2020-01-(start_day)."""
    days = np.datetime64(f"2020-01-{start_day:02d}") + 7 * np.arange(n)
    return [str(d) for d in days]


# ---- the time axis ---------------------------------------------------------------------------


def test_iso_date_column_is_found_and_is_not_an_input(csv_file):
    path = csv_file(lines("week,value", *(f"{d},{i % 5}" for i, d in enumerate(weekly(10)))))

    series = load_csv(path, "value")

    assert series.feature_names == ("value",)
    assert series.time is not None
    assert (series.time.column, series.time.kind, series.time.step) == ("week", "datetime", "P7D")
    assert "ISO-8601" in series.time.reason


def test_integer_column_named_like_a_time_axis_is_found(csv_file):
    path = csv_file(lines("Step,value", *(f"{i},{i % 3}" for i in range(10))))

    series = load_csv(path, "value")

    assert series.feature_names == ("value",)
    assert series.time is not None
    assert (series.time.column, series.time.kind, series.time.step) == ("Step", "integer", "1")


def test_unnamed_first_column_of_increasing_integers_is_a_saved_index(csv_file):
    path = csv_file(lines(",value,temp", *(f"{i},{i % 3},{i % 4}" for i in range(10))))

    series = load_csv(path, "value")

    assert series.feature_names == ("value", "temp")
    assert series.time is not None and series.time.column == ""
    assert "saved index" in series.time.reason


def test_compact_yyyymmdd_dates_in_a_date_column(csv_file):
    path = csv_file(lines("date,co2", "19580329,316.1", "19580405,317.3", "19580419,317.6"))

    series = load_csv(path, "co2")

    assert series.time is not None and series.time.step == "P7D"
    np.testing.assert_array_equal(series.values[:, 0], [316.1, 317.3, np.nan, 317.6])


def test_year_first_slash_dates_and_times(csv_file):
    path = csv_file(lines("date,temp", "2010/01/01 00:00,39.4", "2010/01/01 01:00,39.2"))

    series = load_csv(path, "temp")

    assert series.time is not None and series.time.step == "PT1H"


def test_time_column_none_turns_detection_off(csv_file):
    path = csv_file(lines("step,value", *(f"{i},{i % 3}" for i in range(10))))

    series = load_csv(path, "value", time_column="none")

    assert series.time is None
    assert series.feature_names == ("step", "value")


def test_rows_are_sorted_by_time(csv_file):
    dates = weekly(4)
    path = csv_file(
        lines("week,value", f"{dates[2]},3", f"{dates[0]},1", f"{dates[3]},4", f"{dates[1]},2")
    )

    series = load_csv(path, "value")

    assert series.values[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_missing_timestamps_become_missing_rows(csv_file):
    dates = weekly(6)
    path = csv_file(lines("week,value", *(f"{d},{i}" for i, d in enumerate(dates) if i != 3)))

    series = load_csv(path, "value")

    assert series.time is not None and series.time.inserted == 1
    np.testing.assert_array_equal(series.values[:, 0], [0, 1, 2, np.nan, 4, 5])


def test_monthly_data_steps_by_calendar_month(csv_file):
    path = csv_file(
        lines("month,y", "2020-01-31,1", "2020-02-29,2", "2020-03-31,3", "2020-05-31,5")
    )

    series = load_csv(path, "y")

    assert series.time is not None and series.time.step == "P1M"
    np.testing.assert_array_equal(series.values[:, 0], [1, 2, 3, np.nan, 5])


def test_duplicated_timestamps_are_refused_naming_the_first(csv_file):
    path = csv_file(lines("date,y", "2020-01-01,1", "2020-01-02,2", "2020-01-02,3", "2020-01-03,3"))

    with pytest.raises(DataError, match="timestamp '2020-01-02' appears more than once"):
        load_csv(path, "y")


def test_timestamps_off_the_grid_are_refused(csv_file):
    path = csv_file(
        lines("date,y", "2020-01-01,1", "2020-01-02,2", "2020-01-03,3", "2020-01-04 12:00,4")
    )

    with pytest.raises(DataError, match="not on a regular grid: the step is P1D"):
        load_csv(path, "y")


# ---- columns ---------------------------------------------------------------------------------


def test_text_and_empty_columns_are_dropped_with_a_note_unless_named(csv_file):
    path = csv_file(lines("date,y,weather,spare", "2020-01-01,1,rain,", "2020-01-02,2,sun,"))

    series = load_csv(path, "y")

    assert series.feature_names == ("y",)
    assert dict(series.dropped) == {
        "weather": "non-numeric column",
        "spare": "entirely empty column",
    }


def test_decimal_comma_in_a_semicolon_separated_file(csv_file):
    path = csv_file(lines("date;y;x", "2020-01-01;1,5;2", "2020-01-02;2,25;3"))

    series = load_csv(path, "y")

    np.testing.assert_array_equal(series.values, [[1.5, 2.0], [2.25, 3.0]])


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters_are_detected(csv_file, delimiter):
    path = csv_file(lines(delimiter.join(["date", "y"]), delimiter.join(["2020-01-01", "3"])))

    series = load_csv(path, "y")

    assert series.values.tolist() == [[3.0]]


def monotonic_csv(csv_file, n=300):
    rows = (f"{i},{np.sin(i / 5):.4f},7,{1000 + 3 * i}" for i in range(n))
    return csv_file(lines("step,load,flag,counter", *rows))


def test_constant_and_strictly_monotonic_columns_are_not_inputs(csv_file):
    series = load_csv(monotonic_csv(csv_file), "load")

    prepared = prepare(series, val_fraction=0.15, test_fraction=0.15, window=8, horizon=1)

    assert prepared.series.feature_names == ("load",)
    assert dict(prepared.series.dropped) == {
        "flag": "constant over the training split",
        "counter": "rises or falls strictly over the training split",
    }


def test_monotonic_column_named_with_features_stays(csv_file):
    series = load_csv(monotonic_csv(csv_file), "load", features=["counter"])

    prepared = prepare(series, val_fraction=0.15, test_fraction=0.15, window=8, horizon=1)

    assert prepared.series.feature_names == ("load", "counter")
    assert prepared.series.monotonic_inputs == ("counter",)


@pytest.mark.slow
def test_training_warns_that_a_named_monotonic_input_will_drift(csv_file, caplog, tmp_path):
    argv = ["--data", str(monotonic_csv(csv_file)), "--target", "load", "--features", "counter"]
    tiny = ["--window", "8", "--units", "4", "--epochs", "1"]

    with caplog.at_level("INFO", logger="training"):
        exit_code = main([*argv, *tiny, "--output", str(tmp_path)])

    assert exit_code in (0, 3)  # published or refused: the model is not the point here
    assert "input counter rises or falls strictly over the training split" in caplog.text
    assert "be flagged as drifted, by construction" in caplog.text
    assert "time column: step (step 1; strictly increasing integers" in caplog.text


# ---- bad input: one line, exit 2, nothing published -------------------------------------------

BAD_INPUTS = {
    "empty file": (b"", "is empty"),
    "header without rows": (b"date,y\n", "has a header but no data rows"),
    "too few rows": (
        lines("date,y", *(f"{d},{i}" for i, d in enumerate(weekly(12)))).encode(),
        "rows are needed",
    ),
    "target missing": (b"date,x\n2020-01-01,1\n", "column(s) not in data.csv: y"),
    "target empty": (b"date,y,x\n2020-01-01,,1\n2020-01-02,,2\n", "entirely empty column(s): y"),
    "unparseable time": (
        b"time,y\n2020-01-01,1\n2020-01-02,2\nyesterday,3\n",
        "--time-column time: data row 3 'yesterday' is not an ISO-8601 timestamp",
    ),
    "mixed types": (
        b"date,y\n2020-01-01,1\n2020-01-02,n/a?\n2020-01-03,3\n",
        "column y mixes numbers and text (first text: 'n/a?' at data row 2)",
    ),
    "not utf-8": (
        b"date,y\n2020-01-01,1\n2020-01-02,\xe9\n",
        "is not UTF-8 text (byte 0xe9 on line 3)",
    ),
    "duplicated timestamp": (
        b"date,y\n2020-01-01,1\n2020-01-01,2\n",
        "timestamp '2020-01-01' appears more than once",
    ),
    "ragged row": (b"date,y\n2020-01-01,1\n2020-01-02,2,3\n", "line 3 of data.csv has 3 fields"),
}


@pytest.mark.parametrize(("content", "expected"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_exits_2_with_one_line_and_publishes_nothing(
    capsys, csv_file, tmp_path, content, expected
):
    path = csv_file(content)
    output = tmp_path / "artifacts"

    exit_code = main(["--data", str(path), "--target", "y", "--output", str(output)])

    assert exit_code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("python -m training.train: error: ")
    assert expected in err[0]
    assert list_versions(output) == []
