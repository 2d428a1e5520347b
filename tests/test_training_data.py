"""Input data: CSV loading, imputation and the chronological split (training/data.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.data import (
    DataError,
    chronological_split,
    impute,
    synthetic_series,
)
from training.table import load_csv


@pytest.fixture
def write_csv(tmp_path):
    """Write ``lines`` (already comma-joined) to a CSV file and return its path."""

    def write(lines: list[str], name: str = "data.csv"):
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def mixed_csv(write_csv):
    """Numeric ``load``/``temp``, a text column ``site`` and an all-blank column ``spare``."""
    return write_csv(
        [
            "time,load,temp,site,spare",
            "2024-01-01T02:00:00,12.5,3.0,north,",
            "2024-01-01T00:00:00,10.5,1.0,north,",
            "2024-01-01T01:00:00,,2.0,south,",
            "2024-01-01T03:00:00,13.5,NaN,south,",
        ]
    )


# ---- CSV ------------------------------------------------------------------------------------


def test_load_csv_rejects_named_non_numeric_and_empty_columns_by_name(mixed_csv):
    with pytest.raises(DataError) as excinfo:
        load_csv(mixed_csv, "load", features=["temp", "site", "spare"], time_column="time")

    message = str(excinfo.value)
    assert "non-numeric column(s): site" in message
    assert "entirely empty column(s): spare" in message
    assert "\n" not in message


def test_load_csv_selected_features_sorted_by_time(mixed_csv):
    series = load_csv(mixed_csv, "load", features=["temp"], time_column="time")

    assert series.feature_names == ("load", "temp")
    assert series.target_index == 0
    assert series.timestamps == (
        "2024-01-01T00:00:00",
        "2024-01-01T01:00:00",
        "2024-01-01T02:00:00",
        "2024-01-01T03:00:00",
    )
    expected = np.array([[10.5, 1.0], [np.nan, 2.0], [12.5, 3.0], [13.5, np.nan]])
    np.testing.assert_array_equal(series.values, expected)


def test_load_csv_keeps_target_where_features_place_it(mixed_csv):
    series = load_csv(mixed_csv, "load", features=["temp", "load"], time_column="time")

    assert series.feature_names == ("temp", "load")
    assert series.target_index == 1


def test_load_csv_names_unknown_columns(mixed_csv):
    with pytest.raises(DataError, match="column\\(s\\) not in data.csv: humidity"):
        load_csv(mixed_csv, "load", features=["humidity"], time_column="time")


def test_load_csv_rejects_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_csv(tmp_path / "absent.csv", "load")


def test_load_csv_rejects_ragged_rows(write_csv):
    path = write_csv(["load,temp", "1,2", "3"])

    with pytest.raises(DataError, match="line 3 .* has 1 fields, expected 2"):
        load_csv(path, "load")


def test_load_csv_rejects_non_iso_timestamps(write_csv):
    path = write_csv(["time,load", "yesterday,1", "today,2"])

    with pytest.raises(DataError, match="--time-column time: data row 1 'yesterday' is not an ISO"):
        load_csv(path, "load", time_column="time")


def test_load_csv_rejects_blank_timestamp(write_csv):
    path = write_csv(["time,load", "2026-01-01T00:00,1", ",99", "2026-01-01T02:00,2"])

    with pytest.raises(DataError, match="--time-column time: data row 2 is empty"):
        load_csv(path, "load", time_column="time")


def test_load_csv_sorts_timezone_aware_timestamps_in_utc(write_csv):
    path = write_csv(
        ["time,load", "2026-01-01T02:00+01:00,2", "2026-01-01T00:30Z,1", "2026-01-01T02:00Z,3"]
    )

    series = load_csv(path, "load", time_column="time")

    # 00:30Z, 01:00Z (02:00+01:00), 02:00Z on a 30-minute grid: 01:30Z had no row.
    np.testing.assert_array_equal(series.values[:, 0], [1.0, 2.0, np.nan, 3.0])


def test_load_csv_rejects_duplicate_features(write_csv):
    path = write_csv(["load,temp", "1,2", "3,4"])

    with pytest.raises(DataError, match="more than once: temp"):
        load_csv(path, "load", features=["load", "temp", "temp"])


def test_load_csv_rejects_time_column_as_feature(mixed_csv):
    with pytest.raises(DataError, match="cannot also be a feature"):
        load_csv(mixed_csv, "load", features=["time"], time_column="time")


def test_load_csv_treats_infinity_as_non_numeric(write_csv):
    path = write_csv(["load,temp", "1,inf", "2,3"])

    with pytest.raises(DataError, match="non-numeric column\\(s\\): temp"):
        load_csv(path, "load")


# ---- imputation -----------------------------------------------------------------------------


def test_impute_forward_fills_gaps():
    values = np.array([[1.0], [np.nan], [np.nan], [4.0], [np.nan]])

    filled, _, n_filled = impute(values, (0, 4))

    np.testing.assert_array_equal(filled[:, 0], [1.0, 1.0, 1.0, 4.0, 4.0])
    assert n_filled == 3


def test_impute_leading_gap_takes_training_mean_only():
    # Training rows 0..3 have mean 4 in column 0; the later rows (mean 1000) must not count.
    values = np.array(
        [
            [np.nan, 1.0],
            [3.0, np.nan],
            [5.0, 2.0],
            [np.nan, 3.0],
            [1000.0, 10.0],
            [np.nan, 20.0],
            [1000.0, 30.0],
        ]
    )

    filled, means, n_filled = impute(values, (0, 4))

    np.testing.assert_array_equal(means, [4.0, 2.0])
    np.testing.assert_array_equal(filled[:, 0], [4.0, 3.0, 5.0, 5.0, 1000.0, 1000.0, 1000.0])
    np.testing.assert_array_equal(filled[:, 1], [1.0, 1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    assert n_filled == 4


def test_impute_leaves_input_untouched():
    values = np.array([[1.0], [np.nan]])

    impute(values, (0, 2))

    assert np.isnan(values[1, 0])


def test_impute_rejects_column_without_training_values():
    values = np.array([[np.nan, 1.0], [np.nan, 2.0], [5.0, 3.0]])

    with pytest.raises(DataError, match="column.s. load have no values in the training split"):
        impute(values, (0, 2), ("load", "temp"))


def test_synthetic_series_has_gaps_and_large_raw_values():
    series = synthetic_series(1500)

    load = series.values[:, series.target_index]
    assert series.target == "load"
    assert np.isnan(load).any()
    assert not np.isnan(series.values[0]).any()
    assert np.nanmin(load) > 10_000


# ---- chronological split ----------------------------------------------------------------------


def test_chronological_split_keeps_time_order():
    split = chronological_split(100, val_fraction=0.15, test_fraction=0.15, min_rows=10)

    assert split.train == (0, 70)
    assert split.val == (70, 85)
    assert split.test == (85, 100)


@given(
    n_rows=st.integers(min_value=30, max_value=5000),
    val_fraction=st.floats(min_value=0.05, max_value=0.4),
    test_fraction=st.floats(min_value=0.05, max_value=0.4),
)
def test_chronological_split_parts_are_contiguous_and_disjoint(n_rows, val_fraction, test_fraction):
    split = chronological_split(
        n_rows, val_fraction=val_fraction, test_fraction=test_fraction, min_rows=1
    )

    assert split.train[0] == 0
    assert split.train[1] == split.val[0]
    assert split.val[1] == split.test[0]
    assert split.test[1] == n_rows
    assert all(lo < hi for lo, hi in (split.train, split.val, split.test))


def test_chronological_split_rejects_too_short_data():
    with pytest.raises(DataError, match="the validation split has 3 rows but needs at least 10"):
        chronological_split(20, val_fraction=0.15, test_fraction=0.15, min_rows=10)


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.0, 0.2), (0.2, 0.0), (0.5, 0.5)])
def test_chronological_split_rejects_bad_fractions(val_fraction, test_fraction):
    with pytest.raises(DataError, match="must be in \\(0, 1\\) and sum below 1"):
        chronological_split(
            1000, val_fraction=val_fraction, test_fraction=test_fraction, min_rows=10
        )
