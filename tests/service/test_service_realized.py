"""Realized accuracy through the real servers: held-out series sent window by window under a
``series_id``; the counters must equal the sums computed offline from the forecasts and
intervals the server returned, and the actual values the later windows brought.

The proof runs ``python -m service`` as a process and reads its real ``/metrics`` endpoint; the
other cases run an in-process ``grpc.aio`` server on a loopback port and read its registry
through prometheus_client's public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from service_process import ServiceProcess
from service_testkit import start_server, target_of

from benchmarks.degraded import crossing
from monitoring.realized import OUTCOMES
from service.api import pb, pb_grpc
from service.config import Settings
from service.convert import series_ids_from_request
from service.errors import InvalidWindow
from service.validation import MAX_SERIES_ID_BYTES
from training.artifacts import Artifacts, load_artifacts
from training.data import synthetic_series
from training.faults import shift
from training.prepare import prepare

HORIZON = 3
LEVELS = (80.0, 95.0)
# Rows the series moves on between two windows sent: mostly one, sometimes more (the earlier
# forecast's steps up to the shift are scored), never a whole window.
SHIFTS = (1, 1, 2, 1, 3, 1, 4, 1, 7)
INTERVAL_COUNTERS = ("forecast_interval_scored_total", "forecast_interval_covered_total")
REALIZED = (
    "forecast_realized_values_total",
    "forecast_realized_abs_error_total",
    "forecast_realized_persistence_abs_error_total",
    "forecast_realized_squared_error_total",
)
TIMEOUT = 30.0


# -------------------------------------------------------------------------------------------
# A model with a 3-step horizon, and its held-out series
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def horizon3_version(tmp_path_factory, tiny_training_args) -> Path:
    """The session's tiny training configuration with ``--horizon 3`` (intervals calibrated)."""
    from training.train import main

    output = tmp_path_factory.mktemp("horizon3")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([*tiny_training_args, "--horizon", str(HORIZON), "--output", str(output)]) == 0
    (version,) = [p for p in output.iterdir() if not p.name.startswith(".")]
    return version


@pytest.fixture(scope="module")
def horizon3(horizon3_version: Path) -> Artifacts:
    artifacts = load_artifacts(horizon3_version)
    assert artifacts.horizon == HORIZON and artifacts.manifest.intervals is not None
    return artifacts


@pytest.fixture(scope="module")
def held_out(tiny_training_args, horizon3: Artifacts) -> dict[str, np.ndarray]:
    """The validation and test rows ``[rows, features]`` of the built-in series as float32 (the
    wire precision), imputed as training did: two series the model never trained on."""
    steps = int(tiny_training_args[tiny_training_args.index("--synthetic-steps") + 1])
    prepared = prepare(
        synthetic_series(steps),
        val_fraction=0.15,
        test_fraction=0.15,
        window=horizon3.window,
        horizon=HORIZON,
    )
    return {name: prepared.splits[name].astype(np.float32) for name in ("val", "test")}


def window_ends(rows: int, window: int) -> list[int]:
    """The last row of each window sent, moving on by SHIFTS in turn."""
    ends: list[int] = []
    end = window - 1
    for rows_moved in itertools.cycle(SHIFTS):
        if end >= rows:
            return ends
        ends.append(end)
        end += rows_moved
    raise AssertionError("unreachable")


def request(windows: list[np.ndarray], series_ids: list[str], levels=()) -> pb.ForecastRequest:
    return pb.ForecastRequest(
        windows=[
            pb.Window(values=w.ravel().tolist(), series_id=sid)
            for w, sid in zip(windows, series_ids, strict=True)
        ],
        levels=levels,
    )


@dataclasses.dataclass
class Offline:
    """The realized-accuracy sums computed from what the server returned and the rows sent."""

    target_index: int
    values: int = 0
    abs_error: float = 0.0
    persistence_abs_error: float = 0.0
    squared_error: float = 0.0
    scored: dict[str, int] = dataclasses.field(default_factory=dict)
    covered: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, rows: np.ndarray, end: int, next_end: int, prediction: pb.Prediction) -> None:
        """Score ``prediction``, made from the window ending at row ``end``, against the rows
        the window ending at ``next_end`` brought."""
        persistence = float(rows[end, self.target_index])
        for j in range(1, min(next_end - end, len(prediction.values)) + 1):
            actual = float(rows[end + j, self.target_index])
            error = prediction.values[j - 1] - actual
            self.values += 1
            self.abs_error += abs(error)
            self.persistence_abs_error += abs(persistence - actual)
            self.squared_error += error * error
            for interval in prediction.intervals:
                level = f"{interval.level:g}"
                inside = interval.lo[j - 1] <= actual <= interval.hi[j - 1]
                self.scored[level] = self.scored.get(level, 0) + 1
                self.covered[level] = self.covered.get(level, 0) + int(inside)

    def expected(self) -> dict[str, float]:
        return dict(zip(REALIZED, self.sums(), strict=True))

    def sums(self) -> tuple[float, ...]:
        return (self.values, self.abs_error, self.persistence_abs_error, self.squared_error)


Reader = Callable[..., "float | None"]  # (name, labels=None) -> value, as get_sample_value


def frozen(read: Reader) -> Reader:
    """The realized-accuracy series as ``read`` gives them now, read the same way later."""
    keys: list[tuple[str, dict[str, str]]] = [(name, {}) for name in REALIZED]
    keys += [("forecast_realized_windows_total", {"outcome": o}) for o in OUTCOMES]
    keys += [(name, {"level": f"{level:g}"}) for name in INTERVAL_COUNTERS for level in LEVELS]
    values = {_key(name, labels): read(name, labels) for name, labels in keys}
    return lambda name, labels=None: values.get(_key(name, labels))


def _key(name: str, labels: dict[str, str] | None) -> tuple:
    return name, tuple(sorted((labels or {}).items()))


def scraped(url: str) -> Reader:
    """The samples of a ``/metrics`` endpoint now, read like ``get_sample_value``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = {
        _key(sample.name, sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return lambda name, labels=None: values.get(_key(name, labels))


def assert_counters_match(read: Reader, offline: Offline, before: Reader | None = None) -> None:
    """``read(name, labels)`` -> the counter now; ``before`` the same before the traffic."""

    def delta(name: str, labels: dict[str, str] | None = None) -> float:
        start = 0.0 if before is None else (before(name, labels) or 0.0)
        return (read(name, labels) or 0.0) - start

    assert delta("forecast_realized_values_total") == offline.values
    for name, value in offline.expected().items():
        # Within float32 rounding: the same float32 forecasts and actuals, summed in float64.
        assert delta(name) == pytest.approx(value, rel=1e-9, abs=1e-6), name
    for level, count in offline.scored.items():
        assert delta("forecast_interval_scored_total", {"level": level}) == count, level
        assert delta("forecast_interval_covered_total", {"level": level}) == offline.covered[level]


# -------------------------------------------------------------------------------------------
# The proof: a real service process and its /metrics
# -------------------------------------------------------------------------------------------


def test_counters_equal_offline_sums_of_held_out_series_sent_window_by_window(
    horizon3_version: Path, horizon3: Artifacts, held_out: dict[str, np.ndarray], tmp_path: Path
):
    window, ti = horizon3.window, horizon3.transform().target_index
    offline = Offline(ti)
    # Two series side by side, one window of each per request while both last.
    ends = {name: window_ends(len(rows), window) for name, rows in held_out.items()}
    steps = max(len(e) for e in ends.values())
    with ServiceProcess(horizon3_version, tmp_path / "service.log", metrics=True) as service:
        service.wait_until_serving()
        url = f"http://{service.metrics_target}/metrics"
        with grpc.insecure_channel(service.target) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            last: dict[str, tuple[int, pb.Prediction]] = {}
            for step in range(steps):
                names = [name for name in held_out if step < len(ends[name])]
                windows = [
                    held_out[n][ends[n][step] - window + 1 : ends[n][step] + 1] for n in names
                ]
                response = stub.Forecast(
                    request(windows, [f"held-out-{n}" for n in names], LEVELS), timeout=TIMEOUT
                )
                for name, prediction in zip(names, response.predictions, strict=True):
                    end = ends[name][step]
                    if name in last:
                        previous_end, previous = last[name]
                        offline.add(held_out[name], previous_end, end, previous)
                    last[name] = (end, prediction)
        read = scraped(url)
    assert_counters_match(read, offline)
    continued = sum(len(e) - 1 for e in ends.values())
    assert read("forecast_realized_windows_total", {"outcome": "continued"}) == continued
    assert read("forecast_realized_windows_total", {"outcome": "new"}) == 2
    assert read("forecast_realized_windows_total", {"outcome": "restarted"}) == 0
    assert offline.values > 2 * len(SHIFTS)
    assert set(offline.scored) == {"80", "95"}
    assert read("forecast_interval_nominal_coverage_ratio", {"level": "80"}) == 0.8
    assert read("forecast_realized_tracked_series") == 2


# -------------------------------------------------------------------------------------------
# In-process servers: streaming, starting over, the LRU cap, tracking off, long ids
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked(aio: asyncio.Runner, settings: Settings, horizon3: Artifacts) -> Iterator[tuple]:
    """A warmed-up in-process server of the 3-step model with a registry: (server, registry)."""
    registry = CollectorRegistry()
    running = aio.run(start_server(settings, horizon3, registry=registry))
    yield running, registry
    aio.run(running.shutdown(grace=1.0))


async def test_streamed_windows_are_scored_like_unary_ones(tracked, held_out, horizon3):
    running, registry = tracked
    before = frozen(registry.get_sample_value)
    rows, window = held_out["val"], horizon3.window
    ends = window_ends(len(rows), window)[:40]
    offline = Offline(horizon3.transform().target_index)
    async with grpc.aio.insecure_channel(target_of(running)) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        messages = [request([rows[e - window + 1 : e + 1]], ["streamed"], LEVELS) for e in ends]
        call = stub.StreamForecast(iter(messages), timeout=TIMEOUT)
        predictions = [response.predictions[0] async for response in call]
    assert len(predictions) == len(ends)
    for i in range(len(ends) - 1):
        offline.add(rows, ends[i], ends[i + 1], predictions[i])
    assert_counters_match(registry.get_sample_value, offline, before)
    assert offline.values > len(ends)


async def test_a_window_that_does_not_continue_starts_the_series_over(tracked, held_out, horizon3):
    running, registry = tracked
    get = registry.get_sample_value
    before = frozen(get)
    rows, window = held_out["test"], horizon3.window
    windows = [rows[e - window + 1 : e + 1] for e in (60, 61, 90, 91)]  # 61 -> 90: a jump
    async with grpc.aio.insecure_channel(target_of(running)) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        for w in windows:
            await stub.Forecast(request([w], ["jumps"]), timeout=TIMEOUT)
    outcomes = {
        o: get("forecast_realized_windows_total", {"outcome": o})
        - before("forecast_realized_windows_total", {"outcome": o})
        for o in OUTCOMES
    }
    assert outcomes == {"new": 1, "continued": 2, "restarted": 1}
    # 60 -> 61 and 90 -> 91 score step 1 of a forecast each; 61 -> 90 scores nothing.
    assert get("forecast_realized_values_total") - before("forecast_realized_values_total") == 2


async def test_the_least_recently_used_series_is_dropped_past_the_cap(
    aio, settings, artifacts, windows
):
    registry = CollectorRegistry()
    capped = dataclasses.replace(settings, max_tracked_series=2)
    running = await start_server(capped, artifacts, registry=registry)
    get = registry.get_sample_value
    try:
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            for sid in ("a", "b", "c", "a"):  # c evicts a, then a evicts b
                await stub.Forecast(request([windows[0]], [sid]), timeout=TIMEOUT)
        assert get("forecast_realized_tracked_series") == 2
        assert get("forecast_realized_evicted_series_total") == 2
        assert get("forecast_realized_windows_total", {"outcome": "new"}) == 4
    finally:
        await running.shutdown(grace=1.0)


async def test_tracking_off_exports_no_realized_metrics_and_still_answers(
    settings, artifacts, windows
):
    registry = CollectorRegistry()
    off = dataclasses.replace(settings, realized_tracking=False)
    running = await start_server(off, artifacts, registry=registry)
    try:
        assert running.realized is None
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            response = await stub.Forecast(
                request([windows[0], windows[1]], ["s", "s"]), timeout=TIMEOUT
            )
        assert len(response.predictions) == 2
        for name in (*REALIZED, "forecast_realized_tracked_series"):
            assert registry.get_sample_value(name) is None, name
        # The batch is counted by the monitoring thread, after the answer went out.
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while registry.get_sample_value("forecast_windows_total") != 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        await running.shutdown(grace=1.0)


@given(
    st.lists(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=90)  # Cs: not UTF-8
        | st.sampled_from(["", "x" * 256, "x" * 257, "é" * 128, "é" * 129, "😀" * 64]),
        min_size=1,
        max_size=6,
    )
)
def test_series_ids_are_read_and_checked_by_their_utf8_length(ids):
    message = pb.ForecastRequest(windows=[pb.Window(series_id=sid) for sid in ids])
    sizes = [len(sid.encode()) for sid in ids]
    too_long = [i for i, size in enumerate(sizes) if size > MAX_SERIES_ID_BYTES]
    if too_long:
        with pytest.raises(InvalidWindow) as error:
            series_ids_from_request(message)
        assert str(error.value) == (
            f"window {too_long[0]}: series_id is {sizes[too_long[0]]} bytes; the limit is 256"
        )
    else:
        assert series_ids_from_request(message) == (ids if any(ids) else None)


async def test_series_id_over_256_bytes_is_invalid_argument_naming_the_window(stub, windows):
    fits = "é" * (MAX_SERIES_ID_BYTES // 2)  # 256 bytes in UTF-8
    too_long = fits + "x"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Forecast(request([windows[0], windows[1]], [fits, too_long]), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "window 1: series_id is 257 bytes; the limit is 256"
    call = stub.StreamForecast(
        iter([request([windows[0]], [fits]), request([windows[1]], [too_long])]), timeout=TIMEOUT
    )
    answered = []
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for response in call:
            answered.append(response)
    assert len(answered) == 1
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("message 1: window 0: series_id is 257 bytes")
    # The server stays up.
    response = await stub.Forecast(request([windows[2]], [fits]), timeout=TIMEOUT)
    assert len(response.predictions) == 1


# -------------------------------------------------------------------------------------------
# A degraded model
# -------------------------------------------------------------------------------------------


async def test_a_shifted_model_loses_to_persistence_where_the_healthy_one_wins(
    tracked, settings, horizon3_version, horizon3, held_out, tmp_path
):
    """``training.faults.shift`` moves every forecast by twice the validation persistence MAE;
    sent the same held-out series, the copy's realized error ratio against persistence ends
    above 1.0 and the version's own below it."""
    by = 2.0 * horizon3.manifest.metrics["val"].persistence_mae
    shifted = load_artifacts(shift(horizon3_version, tmp_path, by))
    rows, window = held_out["test"], horizon3.window
    windows = [rows[e - window + 1 : e + 1] for e in range(window - 1, len(rows))]
    healthy_server, healthy_registry = tracked
    registry = CollectorRegistry()
    shifted_server = await start_server(settings, shifted, registry=registry)
    ratios, forecasts = {}, {}
    try:
        for name, running, reg in (
            ("healthy", healthy_server, healthy_registry),
            ("shifted", shifted_server, registry),
        ):
            before = frozen(reg.get_sample_value)
            curve = []
            async with grpc.aio.insecure_channel(target_of(running)) as channel:
                stub = pb_grpc.ForecastServiceStub(channel)
                answers = []
                for w in windows:
                    answers.append(await stub.Forecast(request([w], [f"degraded-{name}"])))
                    errors = [
                        (reg.get_sample_value(n) or 0.0) - (before(n) or 0.0) for n in REALIZED[:3]
                    ]
                    if errors[2] > 0:
                        curve.append((int(errors[0]), errors[1] / errors[2]))
            forecasts[name] = np.array([list(a.predictions[0].values) for a in answers])
            ratios[name] = crossing(curve) | {"final": curve[-1][1], "values": curve[-1][0]}
    finally:
        await shifted_server.shutdown(grace=1.0)
    np.testing.assert_allclose(forecasts["shifted"] - forecasts["healthy"], by, rtol=1e-3)
    assert ratios["healthy"]["final"] < 1.0 < ratios["shifted"]["final"], ratios
    assert ratios["shifted"]["above_1_from"] is not None
    assert ratios["healthy"]["above_1_from"] is None
