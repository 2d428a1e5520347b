"""``python -m service.client`` from the shell against the in-process server.

The client runs as a subprocess awaited on the session loop, so the in-process server keeps
answering while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from service_testkit import client_cli, republish, start_server, target_of

from service.api import pb
from service.client import (
    PROG,
    ForecastClient,
    build_parser,
    forecasts_from_response,
    format_versions,
    request_from_windows,
)
from service.config import Settings
from service.server import RunningServer
from training.artifacts import load_artifacts

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


# -------------------------------------------------------------------------------------------
# Model versions: `versions` and `use` (ModelAdmin)
# -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_versions(
    settings: Settings, trained_version: Path, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, str, str]]:
    """A server on a base directory holding the session's version and a newer copy of it: it
    serves the newer. Yields (server, older name, newer name)."""
    base = tmp_path / "base"
    base.mkdir()
    older = shutil.copytree(trained_version, base / trained_version.name)
    newer = republish(trained_version, base)
    running = await start_server(
        replace(settings, artifacts=base, poll_seconds=0), load_artifacts(base)
    )
    try:
        yield running, older.name, newer.name
    finally:
        await running.shutdown(0)


def table(stdout: str) -> tuple[str, list[list[str]], str]:
    """``versions`` output -> (first line, rows, last line); a row is its mark ("*" or "")
    and its cells split on blanks."""
    first, header, *rows, last = stdout.splitlines()
    assert header.split() == [
        "VERSION", "STATUS", "CREATED", "TEST", "MAE", "VS", "PERSISTENCE", "REASON"
    ]  # fmt: skip
    return first, [[row[0].strip(), *row[1:].split()] for row in rows], last


async def test_client_versions_lists_both_and_says_how_to_roll_back(
    settings, trained_version, tmp_path, artifacts
):
    async with two_versions(settings, trained_version, tmp_path) as (running, older, newer):
        target = target_of(running)
        result = await client_cli("--target", target, "versions")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    first, rows, last = table(result.stdout)
    assert first.startswith(f"versions under {tmp_path / 'base'} (* serving")
    test = artifacts.manifest.metrics["test"]
    numbers = [f"{test.mae:.4g}", f"{test.mae / test.persistence_mae:.2f}x"]
    created = artifacts.manifest.created_at
    assert rows == [
        ["", older, "available", created, *numbers],
        ["*", newer, "serving", created, *numbers],
    ]
    assert last == f"roll back with: {PROG} --target {target} use {older}"


def library_use(target: str, version: str) -> pb.SetServingVersionResponse:
    with ForecastClient(target) as client:
        return client.use(version)


async def test_client_use_switches_at_once_and_refuses_unknown_versions(
    settings, trained_version, tmp_path
):
    async with two_versions(settings, trained_version, tmp_path) as (running, older, newer):
        target = target_of(running)
        again = f"{PROG} --target {target}"
        switched = await client_cli("--target", target, "use", older)
        serving_after_use = running.lifecycle.serving.version
        info = await client_cli("--target", target, "info")
        listed = await client_cli("--target", target, "versions")
        missing = await client_cli("--target", target, "use", "nope")
        # The library call, off the loop (it blocks): back to the newer version.
        back = await asyncio.to_thread(library_use, target, newer)
        serving_at_end = running.lifecycle.serving.version

    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.splitlines() == [
        f"now serving {older} (was {newer})",
        f"check with: {again} info (model_version: {older})",
        f"undo with: {again} use {newer}",
    ]
    assert serving_after_use == older
    assert json.loads(info.stdout)["model_version"] == older
    _, rows, last = table(listed.stdout)
    assert [row[:3] for row in rows] == [["*", older, "serving"], ["", newer, "available"]]
    assert last == f"switch with: {again} use {newer}"
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.count("\n") == 1
    assert missing.stderr.startswith(f"{PROG}: error: NOT_FOUND: no version 'nope' under ")
    assert missing.stderr.endswith(f" (list them with: {again} versions)\n")
    assert (back.model_version, back.previous_version) == (newer, older)
    assert serving_at_end == newer


async def test_client_on_a_pinned_server_says_versions_cannot_be_switched(target, artifacts):
    listed = await client_cli("--target", target, "versions")
    refused = await client_cli("--target", target, "use", "other")

    assert listed.returncode == 0, listed.stderr
    first, rows, last = table(listed.stdout)
    assert first == "the server runs one pinned version (* serving):"
    assert [row[:3] for row in rows] == [["*", artifacts.version, "serving"]]
    assert last.startswith(f"{artifacts.version} is pinned: start the server on the artifacts ")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"{PROG}: error: FAILED_PRECONDITION: the server was ")
    assert f"pinned version ({artifacts.version})" in refused.stderr


async def test_client_admin_calls_send_the_admin_token(settings, artifacts):
    running = await start_server(replace(settings, admin_token="admin-secret"), artifacts)
    target = target_of(running)
    try:
        denied = await client_cli("--target", target, "versions")
        wrong = await client_cli(
            "--target", target, "--admin-token", "wrong", "--token", "admin-secret", "versions"
        )
        flag = await client_cli(
            "--target", target, "--token", "wrong", "--admin-token", "admin-secret", "versions"
        )
        env = await client_cli(
            "--target", target, "versions", env={"FORECAST_ADMIN_TOKEN": "admin-secret"}
        )
        fallback = await client_cli("--target", target, "--token", "admin-secret", "versions")
        info = await client_cli("--target", target, "info")  # the forecast RPCs stay open
        listed = await asyncio.to_thread(
            lambda: ForecastClient(target, admin_token="admin-secret").versions()
        )
    finally:
        await running.shutdown(0)

    for result in (denied, wrong):
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1
        assert result.stderr.startswith(
            f"{PROG}: error: UNAUTHENTICATED: missing or invalid bearer token (admin calls send "
            "--admin-token [FORECAST_ADMIN_TOKEN], else --token"
        )
    for result in (flag, env, fallback, info):
        assert result.returncode == 0, result.stderr
    assert [row[:3] for row in table(flag.stdout)[1]] == [["*", artifacts.version, "serving"]]
    assert env.stdout == flag.stdout == fallback.stdout
    assert listed.serving_version == artifacts.version


def test_client_help_names_the_token_variables_but_never_their_values(monkeypatch):
    monkeypatch.setenv("FORECAST_AUTH_TOKEN", "token-value")
    monkeypatch.setenv("FORECAST_ADMIN_TOKEN", "admin-value")
    parser = build_parser()

    text = parser.format_help()

    assert "[FORECAST_AUTH_TOKEN]" in text and "[FORECAST_ADMIN_TOKEN]" in text
    assert "token-value" not in text and "admin-value" not in text
    assert "versions" in text and "use VERSION" in text
    args = parser.parse_args(["use", "v1"])
    assert (args.token, args.admin_token, args.version) == ("token-value", "admin-value", "v1")


def version(name: str, status: str, mae: float | None = None, reason: str = "") -> pb.ModelVersion:
    test = None if mae is None else pb.SplitMetrics(mae=mae, persistence_mae=2.0)
    return pb.ModelVersion(
        version=name, status=status, created_at=f"{name}-time", test=test, reason=reason
    )


def test_client_versions_table_and_next_step():
    response = pb.ListVersionsResponse(
        versions=[
            version("v1", "available", 1.0),
            version("v2", "rejected", 3.0, "worse_than_serving: realized MAE 3 > 1.2 x 1"),
            version("v3", "ignored", reason="v3: sha256 mismatch for model.keras"),
            version("v4", "serving", 1.5),
            version("v5", "candidate", 1.2),
        ],
        serving_version="v4",
        artifacts="/models",
    )

    lines = format_versions(response, "CMD").splitlines()

    assert lines == [
        "versions under /models (* serving; VS PERSISTENCE: test MAE / persistence MAE, "
        "below 1x beats it):",
        "   VERSION  STATUS     CREATED  TEST MAE  VS PERSISTENCE  REASON",
        "   v1       available  v1-time         1           0.50x",
        "   v2       rejected   v2-time         3           1.50x  "
        "worse_than_serving: realized MAE 3 > 1.2 x 1",
        "   v3       ignored    v3-time         -               -  "
        "v3: sha256 mismatch for model.keras",
        "*  v4       serving    v4-time       1.5           0.75x",
        "   v5       candidate  v5-time       1.2           0.60x",
        "roll back with: CMD use v1",  # the newest older version that is available
    ]
    newest = pb.ListVersionsResponse(
        versions=[version("v1", "serving"), version("v2", "rejected")],
        serving_version="v1",
        artifacts="/models",
    )
    assert format_versions(newest, "CMD").endswith("\nswitch with: CMD use v2")
    alone = pb.ListVersionsResponse(
        versions=[version("v1", "serving"), version("v2", "ignored")],
        serving_version="v1",
        artifacts="/models",
    )
    assert format_versions(alone, "CMD").endswith(
        "\nnothing to switch to: v1 is the only usable version under /models"
    )
