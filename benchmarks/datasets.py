"""The series of the quality benchmark: public real data shipped inside installed PyPI packages,
plus the built-in synthetic series, each written as a CSV the way a user would have it.

Nothing is downloaded: every file comes from a package in the ``dev`` extra (pmdarima,
statsmodels, vega_datasets) or from :func:`training.data.synthetic_series`.

"As users have them" means:

- a file the source ships as a CSV is copied byte for byte, with its own date format, its
  empty cells and its extra columns (text ones included);
- a source that ships bare values (pmdarima's ``taylor`` and ``sunspots``) gets the time
  column its documentation gives (start and step), in ISO-8601, and the values as written;
- nothing is cleaned, imputed, sorted or resampled here: that is the trainer's job.

``periods`` are the seasonal periods the source's own description implies (a day of half
hours, a week, a year of weeks...). The trainer detects its own; the benchmark uses these only
for baselines it must compute itself, when a training report has no ``baselines`` section.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """One benchmark series: where it comes from, and how to write it as a CSV."""

    name: str  # the benchmark's name for it (--series)
    title: str
    source: str  # the package and the file or function it comes from
    frequency: str  # in words: "half-hourly", "weekly", ...
    step: str  # the step training.timeaxis detects, ISO-8601 ("PT30M", "P7D", "P1M")
    time_column: str  # the time column of the written CSV
    target: str
    periods: tuple[int, ...]  # seasonal periods in steps implied by the source (may be empty)
    character: str  # trend and seasonality, in words
    writer: Callable[[Path], None]  # writes the CSV to the given path

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    def write_csv(self, directory: Path) -> Path:
        """Write the series as ``<directory>/<name>.csv``; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.file_name
        self.writer(path)
        return path

    def describe(self) -> dict[str, object]:
        """The JSON record of the series (without its length: count the written rows)."""
        return {
            "title": self.title,
            "source": self.source,
            "frequency": self.frequency,
            "step": self.step,
            "time_column": self.time_column,
            "target": self.target,
            "periods": list(self.periods),
            "character": self.character,
        }


def data_rows(path: Path) -> int:
    """Data rows of a written CSV (lines after the header that hold anything)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return sum(1 for row in csv.reader(handle) if any(c.strip() for c in row)) - 1


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def _copy_package_file(package: str, *parts: str) -> Callable[[Path], None]:
    """A writer that copies a data file shipped inside ``package``, byte for byte."""

    def write(path: Path) -> None:
        source = resources.files(package).joinpath(*parts)
        with resources.as_file(source) as located:
            shutil.copyfile(located, path)

    return write


def _number(value: float) -> str:
    """A value as a CSV cell: empty when missing, a whole number without ``.0``, else the
    shortest decimal that reads back exactly."""
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else repr(value)


def _write_columns(
    path: Path, header: Sequence[str], times: Sequence[str], columns: Sequence[np.ndarray]
) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for i, stamp in enumerate(times):
            writer.writerow([stamp, *(_number(float(c[i])) for c in columns)])


def _regular_times(start: datetime, step: timedelta, n: int, fmt: str) -> list[str]:
    return [(start + i * step).strftime(fmt) for i in range(n)]


def _write_taylor(path: Path) -> None:
    """pmdarima ships the values only; its docstring gives Monday 5 June 2000 to Sunday 27
    August 2000, half-hourly (12 weeks of 336 half hours: 4,032 values)."""
    from pmdarima.datasets import load_taylor  # type: ignore[import-untyped, unused-ignore]

    values = np.asarray(load_taylor(), dtype=np.float64)
    times = _regular_times(
        datetime(2000, 6, 5), timedelta(minutes=30), len(values), "%Y-%m-%d %H:%M"
    )
    _write_columns(path, ("time", "demand"), times, (values,))


def _write_sunspots(path: Path) -> None:
    """pmdarima ships the values only, labelled ``Jan 1749`` ... ``Dec 1983``; written with the
    first day of each month, as pandas writes a monthly date index."""
    from pmdarima.datasets import load_sunspots  # type: ignore[import-untyped, unused-ignore]

    values = np.asarray(load_sunspots(), dtype=np.float64)
    months = [f"{1749 + i // 12:04d}-{i % 12 + 1:02d}-01" for i in range(len(values))]
    _write_columns(path, ("month", "sunspots"), months, (values,))


def _write_synthetic(path: Path) -> None:
    """The built-in series with all its columns; its first day is a weekday and days 5 and 6
    of each week are the weekend, so it starts on Monday 1 January 2024, hourly."""
    from training.data import synthetic_series

    series = synthetic_series()
    times = _regular_times(
        datetime(2024, 1, 1), timedelta(hours=1), len(series.values), "%Y-%m-%dT%H:%M:%S"
    )
    columns = [series.values[:, i] for i in range(series.values.shape[1])]
    _write_columns(path, ("timestamp", *series.feature_names), times, columns)


# --------------------------------------------------------------------------------------------
# The series
# --------------------------------------------------------------------------------------------

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="taylor",
            title="Electricity demand, England and Wales (Taylor 2003), megawatts",
            source="pmdarima.datasets.load_taylor() (values inside pmdarima/datasets/"
            "taylor.py); timestamps from its documented start, Monday 2000-06-05 00:00",
            frequency="half-hourly",
            step="PT30M",
            time_column="time",
            target="demand",
            periods=(48, 336),
            character="daily and weekly cycles, no trend over 12 weeks",
            writer=_write_taylor,
        ),
        Dataset(
            name="sf_temps",
            title="Hourly temperature, San Francisco, 2010 (NOAA), degrees F",
            source="vega_datasets local file sf-temps.csv, copied as shipped "
            "(temp first, then date; one hour missing at the DST change)",
            frequency="hourly",
            step="PT1H",
            time_column="date",
            target="temp",
            periods=(24,),
            character="daily cycle on an annual swing",
            writer=_copy_package_file("vega_datasets", "_data", "sf-temps.csv"),
        ),
        Dataset(
            name="seattle_weather",
            title="Daily weather, Seattle, 2012-2015 (NOAA): maximum temperature, degrees C",
            source="vega_datasets local file seattle-weather.csv, copied as shipped "
            "(YYYY/MM/DD dates, precipitation, temp_min, wind and a text weather column)",
            frequency="daily",
            step="P1D",
            time_column="date",
            target="temp_max",
            periods=(365,),
            character="annual cycle, noisy day to day, no trend",
            writer=_copy_package_file("vega_datasets", "_data", "seattle-weather.csv"),
        ),
        Dataset(
            name="co2",
            title="Atmospheric CO2 at Mauna Loa, weekly 1958-2001, ppmv",
            source="statsmodels.datasets.co2 (statsmodels/datasets/co2/co2.csv), copied as "
            "shipped (YYYYMMDD dates; 59 weeks have an empty value)",
            frequency="weekly",
            step="P7D",
            time_column="date",
            target="co2",
            periods=(52,),
            character="steady upward trend with an annual cycle",
            writer=_copy_package_file("statsmodels.datasets.co2", "co2.csv"),
        ),
        Dataset(
            name="sunspots",
            title="Monthly mean sunspot numbers, 1749-1983",
            source="pmdarima.datasets.load_sunspots() (pmdarima/datasets/data/"
            "sunspots.txt.gz); months from its labels, Jan 1749 to Dec 1983",
            frequency="monthly",
            step="P1M",
            time_column="month",
            target="sunspots",
            periods=(),
            character="the ~11-year solar cycle, irregular in length and height; no "
            "fixed seasonal period",
            writer=_write_sunspots,
        ),
        Dataset(
            name="synthetic",
            title="The built-in synthetic load series (training.data.synthetic_series)",
            source="training.data.synthetic_series() with its defaults, all five columns, "
            "timestamps from Monday 2024-01-01 00:00",
            frequency="hourly",
            step="PT1H",
            time_column="timestamp",
            target="load",
            periods=(24, 168),
            character="daily and weekly cycles, +35% trend, temperature response, "
            "0.4% missing readings",
            writer=_write_synthetic,
        ),
    )
}
