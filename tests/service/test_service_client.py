"""``python -m service.client`` from the shell against the in-process server.

The client runs as a subprocess awaited on the session loop, so the in-process server keeps
answering while it runs.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from service_testkit import client_cli, target_of

from service.client import forecasts_from_response, request_from_windows

TIMEOUT = 10.0


@pytest.fixture
def target(server) -> str:
    return target_of(server)


@pytest.fixture
def history_csv(tmp_path, windows, artifacts):
    """Two windows' worth of rows with an extra time column; the last rows are ``windows[5]``."""
    path = tmp_path / "history.csv"
    rows = np.concatenate([windows[4], windows[5]])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", *reversed(artifacts.feature_names)])
        for i, row in enumerate(rows):
            writer.writerow([f"t{i}", *(repr(float(v)) for v in reversed(row))])
    return path


async def test_client_info_prints_model_info_json(target, artifacts):
    result = await client_cli("--target", target, "info")

    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model_version"] == artifacts.version
    assert info["feature_names"] == artifacts.feature_names
    assert info["window"] == artifacts.window


async def test_client_health_prints_serving(target):
    result = await client_cli("--target", target, "health")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


async def test_client_forecast_from_csv_uses_last_window_rows(
    target, history_csv, stub, windows, artifacts
):
    result = await client_cli("--target", target, "forecast", "--csv", str(history_csv))

    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    expected = await stub.Forecast(request_from_windows(windows[5:6]), timeout=TIMEOUT)
    assert body["model_version"] == artifacts.version
    assert body["target"] == artifacts.manifest.target
    np.testing.assert_allclose(body["forecasts"], forecasts_from_response(expected), rtol=1e-6)


async def test_client_forecast_from_json_windows(target, tmp_path, stub, windows):
    path = tmp_path / "windows.json"
    path.write_text(json.dumps({"windows": windows[:3].tolist()}))

    result = await client_cli("--target", target, "forecast", "--json", str(path))

    assert result.returncode == 0, result.stderr
    expected = await stub.Forecast(request_from_windows(windows[:3]), timeout=TIMEOUT)
    np.testing.assert_allclose(
        json.loads(result.stdout)["forecasts"], forecasts_from_response(expected), rtol=1e-6
    )


async def test_client_forecast_csv_missing_column_exits_2(target, tmp_path):
    path = tmp_path / "partial.csv"
    path.write_text("load,temperature\n1,2\n")

    result = await client_cli("--target", target, "forecast", "--csv", str(path))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "missing column(s) hour_sin, hour_cos, weekend" in result.stderr


async def test_client_server_error_is_one_line_with_status(target, tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(json.dumps([[[float("nan")] * 5] * 24]))

    result = await client_cli("--target", target, "forecast", "--json", str(path))

    assert result.returncode == 1
    assert result.stderr == (
        "python -m service.client: error: INVALID_ARGUMENT: "
        "window 0: contains NaN; impute missing values first\n"
    )


async def test_client_forecast_prints_intervals_at_the_levels_asked(
    target, tmp_path, stub, windows
):
    path = tmp_path / "windows.json"
    path.write_text(json.dumps({"windows": windows[:3].tolist()}))

    result = await client_cli(
        "--target", target, "forecast", "--json", str(path), "--levels", "80,95",
        "--series-id", "site-7",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    expected = await stub.Forecast(
        request_from_windows(windows[:3], levels=[80, 95]), timeout=TIMEOUT
    )
    forecasts = np.array(body["forecasts"])
    assert [i["level"] for i in body["intervals"]] == [80.0, 95.0]
    for j, interval in enumerate(body["intervals"]):
        lo, hi = np.array(interval["lo"]), np.array(interval["hi"])
        assert lo.shape == hi.shape == forecasts.shape
        assert np.all(lo <= forecasts) and np.all(forecasts <= hi)
        np.testing.assert_allclose(lo, [list(p.intervals[j].lo) for p in expected.predictions])
        np.testing.assert_allclose(hi, [list(p.intervals[j].hi) for p in expected.predictions])
    wide, narrow = body["intervals"][1], body["intervals"][0]
    assert np.all(np.array(wide["lo"]) <= np.array(narrow["lo"]))
    assert np.all(np.array(narrow["hi"]) <= np.array(wide["hi"]))


def test_client_request_carries_levels_and_series_id(windows):
    request = request_from_windows(windows[:2], levels=(80, 95), series_id="site-7")

    assert list(request.levels) == [80.0, 95.0]
    assert [w.series_id for w in request.windows] == ["site-7", "site-7"]
    assert request_from_windows(windows[:1]).windows[0].series_id == ""
    assert list(request_from_windows(windows[:1]).levels) == []


async def test_client_forecast_without_levels_prints_no_intervals(target, tmp_path, windows):
    path = tmp_path / "windows.json"
    path.write_text(json.dumps({"windows": windows[:1].tolist()}))

    result = await client_cli("--target", target, "forecast", "--json", str(path))

    assert result.returncode == 0, result.stderr
    assert "intervals" not in json.loads(result.stdout)


@pytest.mark.parametrize(
    ("levels", "code", "stderr"),
    [
        ("80,abc", 2, "--levels: expected comma-separated percentages such as 80,95"),
        ("80,120", 1, "INVALID_ARGUMENT: level 120 is outside (0, 100)"),
    ],
)
async def test_client_bad_levels_are_one_line(target, tmp_path, windows, levels, code, stderr):
    path = tmp_path / "windows.json"
    path.write_text(json.dumps({"windows": windows[:1].tolist()}))

    result = await client_cli(
        "--target", target, "forecast", "--json", str(path), "--levels", levels
    )

    assert result.returncode == code
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert stderr in result.stderr
