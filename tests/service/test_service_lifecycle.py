"""New versions without restarts, in-process: watched, shadow-evaluated, promoted or rejected,
ignored when unusable, switched by ModelAdmin; every request answered by one version."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from service_testkit import flip_byte, republish, start_server, synthetic_windows, target_of

from service.api import pb, pb_grpc
from service.client import request_from_windows
from service.server import RunningServer
from training.artifacts import load_artifacts
from training.faults import shift, zero_head

POLL_SECONDS = 0.1
SHADOW_WINDOWS = 128
CALLERS = 8
# Time a test waits for a version to be loaded, compiled and evaluated.
EVENT_TIMEOUT_S = 150.0


@pytest.fixture
def base(trained_version: Path, tmp_path: Path) -> Path:
    """A base directory holding a copy of the session's version."""
    directory = tmp_path / "base"
    directory.mkdir()
    shutil.copytree(trained_version, directory / trained_version.name)
    return directory


def lifecycle_settings(settings, base: Path, **changes):
    return replace(
        settings,
        **{"artifacts": base, "poll_seconds": POLL_SECONDS, "shadow_windows": SHADOW_WINDOWS}
        | changes,
    )


class Load:
    """``CALLERS`` concurrent callers sending requests back to back until stopped; every
    outcome is kept: (status code name, model_version, windows answered)."""

    def __init__(self, target: str, windows: np.ndarray, *, series: bool = False) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.ForecastServiceStub(self.channel)
        self.windows = windows
        self.series = series
        self.outcomes: list[tuple[str, str, int]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._call(i)) for i in range(CALLERS)]
        return self

    async def _call(self, caller: int) -> None:
        step = 0
        while not self._stop.is_set():
            # A series id per caller, its windows in time order: realized accuracy scores them.
            # Otherwise each caller its own walk through the windows.
            index = caller * 97 + step if self.series else caller * 8 + step * 5
            windows = self.windows[index % len(self.windows)][None]
            request = request_from_windows(
                windows, series_id=f"caller-{caller}" if self.series else ""
            )
            try:
                response = await self.stub.Forecast(request, timeout=30)
                self.outcomes.append(("OK", response.model_version, len(response.predictions)))
            except grpc.aio.AioRpcError as error:
                self.outcomes.append((error.code().name, "", 0))
            step += 1

    def versions(self) -> list[str]:
        return [version for code, version, _ in self.outcomes if code == "OK"]

    def failures(self) -> list[str]:
        return [code for code, _, _ in self.outcomes if code != "OK"]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.channel.close()


async def wait_for(condition, timeout: float = EVENT_TIMEOUT_S, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def publish_tampered(source: Path, base: Path) -> Path:
    """A sealed copy with one model byte flipped, moved into ``base`` in one rename (the watcher
    never sees it intact)."""
    staged = republish(source, base.parent / "staging-tampered")
    flip_byte(staged / "model.keras")
    return staged.rename(base / staged.name)


def series_windows(window: int) -> np.ndarray:
    """Consecutive windows of the built-in series (each continues the previous one by a row)."""
    return synthetic_windows(window, 1400, steps=1400 + window)


async def started(settings, base: Path, registry: CollectorRegistry, **changes) -> RunningServer:
    return await start_server(
        lifecycle_settings(settings, base, **changes), load_artifacts(base), registry=registry
    )


async def admin_versions(target: str) -> pb.ListVersionsResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        return await pb_grpc.ModelAdminStub(channel).ListVersions(pb.ListVersionsRequest())


async def test_new_version_is_promoted_under_load_and_each_response_has_one_version(
    settings, base, trained_version, windows
):
    registry = CollectorRegistry()
    running = await started(settings, base, registry)
    load = Load(target_of(running), windows).start()
    try:
        await wait_for(lambda: len(load.outcomes) >= 50, what="traffic")
        new = republish(trained_version, base)
        await wait_for(lambda: running.lifecycle.serving.version == new.name, what="promotion")
        promoted_at = len(load.outcomes)
        await wait_for(lambda: len(load.outcomes) >= promoted_at + 50, what="traffic after")
    finally:
        await load.stop()
    try:
        assert load.failures() == [], load.failures()[:5]
        versions = load.versions()
        assert set(versions) == {trained_version.name, new.name}
        assert versions[-1] == new.name
        assert all(n == 1 for code, _, n in load.outcomes)
        assert sample(registry, "forecast_model_promotions_total", result="promoted") == 1
        assert sample(registry, "forecast_model_promotions_total", result="rejected") == 0
        assert sample(registry, "forecast_model_switches_total", trigger="shadow") == 1
        assert sample(registry, "forecast_candidate_info", version=new.name) == 0
        info_versions = {
            s.labels["version"]
            for metric in registry.collect()
            if metric.name == "forecast_model_info"
            for s in metric.samples
        }
        assert info_versions == {new.name}
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            info = await pb_grpc.ForecastServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
        assert info.model_version == new.name
        listed = await admin_versions(target_of(running))
        statuses = {v.version: v.status for v in listed.versions}
        assert statuses == {trained_version.name: "available", new.name: "serving"}
        assert listed.serving_version == new.name
    finally:
        await running.shutdown(0)


async def test_collapsed_version_is_rejected_and_traffic_stays(
    settings, base, trained_version, windows
):
    registry = CollectorRegistry()
    running = await started(settings, base, registry)
    load = Load(target_of(running), windows).start()
    try:
        collapsed = zero_head(trained_version, base)
        await wait_for(
            lambda: sample(registry, "forecast_model_promotions_total", result="rejected") == 1,
            what="rejection",
        )
        rejected_at = len(load.outcomes)
        await wait_for(lambda: len(load.outcomes) >= rejected_at + 20, what="traffic after")
        listed = await admin_versions(target_of(running))
    finally:
        await load.stop()
    try:
        assert load.failures() == []
        assert set(load.versions()) == {trained_version.name}
        assert running.lifecycle.serving.version == trained_version.name
        assert sample(registry, "forecast_model_rejections_total", reason="collapsed") == 1
        assert sample(registry, "forecast_model_promotions_total", result="promoted") == 0
        (record,) = [v for v in listed.versions if v.version == collapsed.name]
        assert record.status == "rejected"
        assert record.reason.startswith(
            "collapsed: the collapse detector set on its outputs since"
        ), record.reason
        # Rejected stays rejected: later scans do not evaluate it again.
        await asyncio.sleep(5 * POLL_SECONDS)
        assert sample(registry, "forecast_model_promotions_total", result="rejected") == 1
    finally:
        await running.shutdown(0)


async def test_unusable_versions_are_ignored_once_and_a_completed_copy_is_evaluated(
    settings, base, trained_version, windows
):
    registry = CollectorRegistry()
    running = await started(settings, base, registry)
    load = Load(target_of(running), windows).start()
    try:
        tampered = publish_tampered(trained_version, base)
        # A copy in progress: the model is there, the manifest not yet.
        staged = republish(trained_version, base.parent / "staging")
        partial = base / staged.name
        partial.mkdir()
        shutil.copy2(staged / "model.keras", partial / "model.keras")
        await wait_for(
            lambda: (
                sample(registry, "forecast_model_versions_ignored_total", reason="incomplete") == 1
                and sample(registry, "forecast_model_versions_ignored_total", reason="checksum")
                == 1
            ),
            what="both ignored",
        )
        await asyncio.sleep(5 * POLL_SECONDS)
        assert sample(registry, "forecast_model_versions_ignored_total", reason="checksum") == 1
        listed = {v.version: v for v in (await admin_versions(target_of(running))).versions}
        assert listed[tampered.name].status == "ignored"
        assert "sha256 mismatch" in listed[tampered.name].reason
        assert listed[partial.name].status == "ignored"
        assert "missing manifest" in listed[partial.name].reason
        # The copy completes: now it is a valid version, evaluated and promoted.
        for item in staged.iterdir():
            if item.name != "model.keras":
                shutil.copy2(item, partial / item.name)
        await wait_for(lambda: running.lifecycle.serving.version == partial.name, what="promotion")
    finally:
        await load.stop()
    try:
        assert load.failures() == []
        assert tampered.name not in load.versions()
    finally:
        await running.shutdown(0)


async def test_without_traffic_a_candidate_waits(settings, base, trained_version):
    registry = CollectorRegistry()
    running = await started(settings, base, registry)
    try:
        new = republish(trained_version, base)
        await wait_for(
            lambda: sample(registry, "forecast_candidate_info", version=new.name) == 1,
            what="candidate",
        )
        await asyncio.sleep(2.0)
        assert running.lifecycle.serving.version == trained_version.name
        listed = {v.version: v.status for v in (await admin_versions(target_of(running))).versions}
        assert listed[new.name] == "candidate"
    finally:
        await running.shutdown(0)


async def test_promote_without_traffic_promotes_once_warm(settings, base, trained_version):
    registry = CollectorRegistry()
    running = await started(settings, base, registry, promote_without_traffic=True)
    try:
        new = republish(trained_version, base)
        await wait_for(lambda: running.lifecycle.serving.version == new.name, what="promotion")
        assert sample(registry, "forecast_model_switches_total", trigger="warm") == 1
        assert sample(registry, "forecast_model_promotions_total", result="promoted") == 1
        assert sample(registry, "forecast_candidate_info", version=new.name) == 0
    finally:
        await running.shutdown(0)


async def test_version_worse_on_realized_accuracy_is_rejected(settings, base, trained_version):
    """A shifted copy follows its inputs (the detectors see nothing) but is wrong by a constant:
    realized accuracy on the same shadowed windows rejects it."""
    registry = CollectorRegistry()
    running = await started(settings, base, registry, shadow_windows=300)
    artifacts = running.lifecycle.serving.artifacts
    persistence = artifacts.manifest.metrics["val"].persistence_mae
    load = Load(target_of(running), series_windows(artifacts.window), series=True).start()
    try:
        await wait_for(lambda: len(load.outcomes) >= 50, what="traffic")
        shifted = shift(trained_version, base, by=3 * persistence)
        await wait_for(
            lambda: sample(registry, "forecast_model_promotions_total", result="rejected") == 1,
            what="rejection",
        )
        listed = {v.version: v for v in (await admin_versions(target_of(running))).versions}
    finally:
        await load.stop()
    try:
        assert load.failures() == []
        assert sample(registry, "forecast_model_rejections_total", reason="worse_than_serving") == 1
        assert listed[shifted.name].status == "rejected"
        assert "worse_than_serving: realized MAE" in listed[shifted.name].reason
    finally:
        await running.shutdown(0)


async def test_set_serving_version_rolls_back_and_refuses_unknown_versions(
    settings, base, trained_version, windows
):
    registry = CollectorRegistry()
    running = await started(settings, base, registry, promote_without_traffic=True)
    target = target_of(running)
    try:
        new = republish(trained_version, base)
        await wait_for(lambda: running.lifecycle.serving.version == new.name, what="promotion")
        load = Load(target, windows).start()
        async with grpc.aio.insecure_channel(target) as channel:
            admin = pb_grpc.ModelAdminStub(channel)
            await wait_for(lambda: len(load.outcomes) >= 20, what="traffic")
            reply = await admin.SetServingVersion(
                pb.SetServingVersionRequest(version=trained_version.name)
            )
            assert (reply.model_version, reply.previous_version) == (trained_version.name, new.name)
            switched_at = len(load.outcomes)
            await wait_for(lambda: len(load.outcomes) >= switched_at + 20, what="traffic after")
            await load.stop()
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await admin.SetServingVersion(pb.SetServingVersionRequest(version="nope"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as escape:
                await admin.SetServingVersion(pb.SetServingVersionRequest(version="../base"))
            assert escape.value.code() == grpc.StatusCode.NOT_FOUND
            broken = republish(trained_version, base)
            flip_byte(broken / "scaler.joblib")
            with pytest.raises(grpc.aio.AioRpcError) as unusable:
                await admin.SetServingVersion(pb.SetServingVersionRequest(version=broken.name))
            assert unusable.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "sha256 mismatch" in (unusable.value.details() or "")
        assert load.failures() == []
        assert load.versions()[-1] == trained_version.name
        assert running.lifecycle.serving.version == trained_version.name
        assert sample(registry, "forecast_model_switches_total", trigger="admin") == 1
        # The version rolled back from is not evaluated again by the watcher.
        await asyncio.sleep(5 * POLL_SECONDS)
        assert running.lifecycle.serving.version == trained_version.name
    finally:
        await running.shutdown(0)


async def test_pinned_version_is_never_replaced(settings, base, trained_version, windows):
    version_dir = base / trained_version.name
    running = await start_server(
        replace(settings, artifacts=version_dir, poll_seconds=POLL_SECONDS, shadow_windows=16),
        load_artifacts(version_dir),
    )
    try:
        republish(trained_version, base)
        load = Load(target_of(running), windows).start()
        await wait_for(lambda: len(load.outcomes) >= 100, what="traffic")
        await load.stop()
        assert set(load.versions()) == {trained_version.name}
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            admin = pb_grpc.ModelAdminStub(channel)
            listed = await admin.ListVersions(pb.ListVersionsRequest())
            assert [v.version for v in listed.versions] == [trained_version.name]
            assert listed.artifacts == ""
            with pytest.raises(grpc.aio.AioRpcError) as pinned:
                await admin.SetServingVersion(pb.SetServingVersionRequest(version="other"))
            assert pinned.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await running.shutdown(0)


async def test_admin_needs_its_token_even_when_forecasts_are_open(settings, base, windows):
    running = await started(settings, base, CollectorRegistry(), admin_token="admin-secret")
    target = target_of(running)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            forecast = await pb_grpc.ForecastServiceStub(channel).Forecast(
                request_from_windows(windows[:1])
            )
            assert len(forecast.predictions) == 1
            admin = pb_grpc.ModelAdminStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await admin.ListVersions(pb.ListVersionsRequest(), metadata=metadata)
                assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            listed = await admin.ListVersions(
                pb.ListVersionsRequest(), metadata=(("authorization", "Bearer admin-secret"),)
            )
            assert listed.serving_version == running.lifecycle.serving.version
    finally:
        await running.shutdown(0)


async def test_no_request_is_answered_by_a_mixture_of_versions(
    settings, base, trained_version, artifacts
):
    """Requests of 40 windows (three model batches each) under concurrency while a version
    whose every forecast differs by a constant is promoted: each response matches one
    version's forecasts in full, the one its model_version names."""
    from service.forecaster import Forecaster

    registry = CollectorRegistry()
    running = await started(settings, base, registry, promote_without_traffic=True)
    windows = synthetic_windows(artifacts.window, 40)
    by = 5 * artifacts.manifest.metrics["val"].persistence_mae
    expected = {
        trained_version.name: Forecaster(artifacts, buckets=(64,), jit_compile=False)
        .predict(windows)
        .forecasts
    }
    stop = asyncio.Event()
    answers: list[tuple[str, np.ndarray]] = []
    failures: list[str] = []

    async def caller(stub) -> None:
        while not stop.is_set():
            try:
                response = await stub.Forecast(request_from_windows(windows), timeout=30)
            except grpc.aio.AioRpcError as error:
                failures.append(error.code().name)
                continue
            values = np.array([list(p.values) for p in response.predictions])
            answers.append((response.model_version, values))

    async with grpc.aio.insecure_channel(target_of(running)) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        tasks = [asyncio.create_task(caller(stub)) for _ in range(CALLERS)]
        try:
            await wait_for(lambda: len(answers) >= 20, what="traffic")
            shifted = shift(trained_version, base, by=by)
            expected[shifted.name] = expected[trained_version.name] + by
            await wait_for(lambda: running.lifecycle.serving.version == shifted.name, what="swap")
            swapped_at = len(answers)
            await wait_for(lambda: len(answers) >= swapped_at + 20, what="traffic after")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    try:
        assert failures == []
        assert {version for version, _ in answers} == set(expected)
        for version, values in answers:
            # Every window of the response is within a tenth of the shift of the version it
            # names (XLA's batch buckets round differently from the plain reference run).
            error = np.abs(values - expected[version]).max()
            assert error < 0.1 * by, (version, error, by)
    finally:
        await running.shutdown(0)


async def test_withdrawn_candidate_is_abandoned(settings, base, trained_version, windows):
    registry = CollectorRegistry()
    running = await started(settings, base, registry)
    try:
        new = republish(trained_version, base)
        await wait_for(
            lambda: sample(registry, "forecast_candidate_info", version=new.name) == 1,
            what="candidate",
        )
        new.rename(base / f".withdrawn-{new.name}")
        await wait_for(
            lambda: sample(registry, "forecast_candidate_info", version=new.name) == 0,
            what="candidate abandoned",
        )
        load = Load(target_of(running), windows).start()
        await wait_for(lambda: len(load.outcomes) >= 300, what="traffic")
        await load.stop()
        assert set(load.versions()) == {trained_version.name}
        assert sample(registry, "forecast_model_promotions_total", result="promoted") == 0
        listed = await admin_versions(target_of(running))
        assert [v.version for v in listed.versions] == [trained_version.name]
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            async with grpc.aio.insecure_channel(target_of(running)) as channel:
                await pb_grpc.ModelAdminStub(channel).SetServingVersion(
                    pb.SetServingVersionRequest(version=f".withdrawn-{new.name}")
                )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await running.shutdown(0)


async def test_with_polling_off_listing_versions_starts_no_candidate(
    settings, base, trained_version, windows
):
    registry = CollectorRegistry()
    running = await started(
        settings, base, registry, poll_seconds=0.0, promote_without_traffic=True
    )
    try:
        new = republish(trained_version, base)
        listed = await admin_versions(target_of(running))
        assert {v.version: v.status for v in listed.versions} == {
            trained_version.name: "serving",
            new.name: "available",
        }
        await asyncio.sleep(1.0)
        assert running.lifecycle.serving.version == trained_version.name
        assert sample(registry, "forecast_candidate_info", version=new.name) == 0
    finally:
        await running.shutdown(0)
