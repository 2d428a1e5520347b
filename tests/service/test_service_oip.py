"""The Open Inference Protocol (v2) on the forecast port: tritonclient against the in-process
server (liveness, readiness, metadata, infer equal to forecast.v1, intervals, validation, auth,
request metrics, realized accuracy), and the typed-contents path through the generated stubs."""

from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry
from service_testkit import start_server, target_of
from tritonclient.utils import InferenceServerException

from service.api import OIP_SERVICE_NAME, oip_grpc, oip_pb
from service.client import forecasts_from_response, intervals_from_response, request_from_windows
from service.server import create_server
from training.data import impute, synthetic_series
from training.transform import sliding_windows

TIMEOUT = 20.0
MODEL = "forecast"
TOKEN = "oip-s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def inputs_of(windows: np.ndarray, datatype: str = "FP32") -> list[triton.InferInput]:
    tensor = triton.InferInput("windows", list(windows.shape), datatype)
    tensor.set_data_from_numpy(windows)
    return [tensor]


async def open_client(running) -> triton_aio.InferenceServerClient:
    """tritonclient's asyncio client (made on the running loop: it opens a grpc.aio channel)."""
    return triton_aio.InferenceServerClient(url=target_of(running))


@pytest.fixture(scope="module")
def client(aio, server):
    """tritonclient's asyncio client on the session's server (no auth, no metrics)."""
    triton_client = aio.run(open_client(server))
    yield triton_client
    aio.run(triton_client.close())


@pytest.fixture(scope="module")
def guarded(aio, settings, artifacts):
    """A server with a bearer token and request metrics: (server, registry)."""
    registry = CollectorRegistry()
    running = aio.run(
        start_server(replace(settings, auth_token=TOKEN), artifacts, registry=registry)
    )
    yield running, registry
    aio.run(running.shutdown(grace=1.0))


async def status_of(call) -> tuple[str, str]:
    """The (status, message) a tritonclient call failed with."""
    with pytest.raises(InferenceServerException) as caught:
        await call
    return caught.value.status(), caught.value.message()


# -------------------------------------------------------------------------------------------
# Liveness, readiness, metadata
# -------------------------------------------------------------------------------------------


async def test_oip_server_is_live_and_ready_and_serves_the_model(client, artifacts):
    assert await client.is_server_live()
    assert await client.is_server_ready()
    assert await client.is_model_ready(MODEL)
    assert await client.is_model_ready(MODEL, model_version=artifacts.version)


async def test_oip_readiness_follows_health_from_warm_up_to_drain(settings, artifacts, windows):
    quick = replace(settings, batch_buckets=(1,), max_batch_size=1)
    running = await create_server(quick, artifacts)
    triton_client = await open_client(running)
    try:
        warming = (await triton_client.is_server_ready(), await triton_client.is_model_ready(MODEL))
        await running.warm_up()
        warm = (await triton_client.is_server_ready(), await triton_client.is_model_ready(MODEL))
        await running.finish(grace=1.0)
        # Draining: the probes still answer, not ready; inference is refused.
        drained = (await triton_client.is_server_ready(), await triton_client.is_model_ready(MODEL))
        live = await triton_client.is_server_live()
        refused = await status_of(triton_client.infer(MODEL, inputs_of(windows[:1])))
    finally:
        await triton_client.close()
        await running.server.stop(0)

    assert warming == (False, False)
    assert warm == (True, True)
    assert drained == (False, False)
    assert live
    assert refused[0] == "StatusCode.UNAVAILABLE"


async def test_oip_server_metadata_names_the_service(client):
    metadata = await client.get_server_metadata()

    assert metadata.name == "lstm-forecast-service"
    assert metadata.version


async def test_oip_model_metadata_gives_shapes_and_datatypes(client, artifacts):
    metadata = await client.get_model_metadata(MODEL)

    assert metadata.name == MODEL
    assert list(metadata.versions) == [artifacts.version]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("windows", "FP32", [-1, artifacts.window, len(artifacts.feature_names)])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("forecast", "FP32", [-1, artifacts.horizon])
    ]


@pytest.mark.parametrize(
    ("name", "version"), [("other", ""), (MODEL, "no-such-version")], ids=["model", "version"]
)
async def test_oip_unknown_model_or_version_is_not_found(client, windows, name, version):
    for call in (
        client.is_model_ready(name, model_version=version),
        client.get_model_metadata(name, model_version=version),
        client.infer(name, inputs_of(windows[:1]), model_version=version),
    ):
        code, message = await status_of(call)
        assert code == "StatusCode.NOT_FOUND"
        assert (version or name) in message


# -------------------------------------------------------------------------------------------
# Inference
# -------------------------------------------------------------------------------------------


async def test_oip_infer_equals_forecast_v1(client, stub, windows, artifacts):
    batch = windows[:5]

    result = await client.infer(MODEL, inputs_of(batch))
    expected = forecasts_from_response(
        await stub.Forecast(request_from_windows(batch), timeout=TIMEOUT)
    )

    forecast = result.as_numpy("forecast")
    assert forecast.dtype == np.float32 and forecast.shape == (5, artifacts.horizon)
    np.testing.assert_allclose(forecast, expected, rtol=1e-6)
    assert result.get_response().model_version == artifacts.version
    assert result.get_response().model_name == MODEL


async def test_oip_infer_levels_give_lo_hi_outputs_equal_to_forecast_v1_intervals(
    client, stub, windows
):
    batch = windows[5:9]

    result = await client.infer(MODEL, inputs_of(batch), parameters={"levels": "80,95"})
    expected = intervals_from_response(
        await stub.Forecast(request_from_windows(batch, levels=[80, 95]), timeout=TIMEOUT)
    )

    names = [output.name for output in result.get_response().outputs]
    assert names == ["forecast", "lo_80", "hi_80", "lo_95", "hi_95"]
    for interval in expected:
        level = f"{interval['level']:g}"
        np.testing.assert_allclose(result.as_numpy(f"lo_{level}"), interval["lo"], rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy(f"hi_{level}"), interval["hi"], rtol=1e-6)


async def test_oip_infer_answers_only_the_requested_outputs(client, windows):
    result = await client.infer(
        MODEL,
        inputs_of(windows[:2]),
        outputs=[triton.InferRequestedOutput("hi_95")],
        parameters={"levels": "95"},
    )

    assert [output.name for output in result.get_response().outputs] == ["hi_95"]
    assert result.as_numpy("forecast") is None


def _bad_windows(windows: np.ndarray, kind: str, limit: int) -> tuple[list[triton.InferInput], str]:
    """Inputs with one problem, and a word its error message must contain."""
    batch = windows[:3].copy()
    if kind == "shape":
        return inputs_of(batch[:, 1:, :]), "shape"
    if kind == "dtype":
        return inputs_of(batch.astype(np.float64), "FP64"), "FP64"
    if kind == "nan":
        batch[1, 2, 0] = np.nan
        return inputs_of(batch), "window 1: contains NaN"
    if kind == "inf":
        batch[2, 0, 1] = np.inf
        return inputs_of(batch), "window 2: contains Inf"
    if kind == "too_many":
        too_many = np.repeat(windows[:1], limit + 1, axis=0)
        return inputs_of(too_many), f"{limit + 1} windows; the limit is {limit}"
    if kind == "name":
        tensor = triton.InferInput("values", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return [tensor], "'values'"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["shape", "dtype", "nan", "inf", "too_many", "name"])
async def test_oip_infer_rejects_bad_windows_naming_the_input(client, windows, settings, kind):
    inputs, word = _bad_windows(windows, kind, settings.max_windows_per_request)

    code, message = await status_of(client.infer(MODEL, inputs))

    assert code == "StatusCode.INVALID_ARGUMENT"
    assert "'windows'" in message or kind == "name", message
    assert word in message, message


@pytest.mark.parametrize(
    ("parameters", "outputs", "word"),
    [
        ({"levels": "80,abc"}, None, "parameter 'levels'"),
        ({"levels": "120"}, None, "level 120 is outside (0, 100)"),
        ({"levels": "80,80"}, None, "level 80 is repeated"),
        (None, ["lo_80"], "unknown output 'lo_80'"),
    ],
    ids=["not-a-number", "out-of-range", "repeated", "output-without-levels"],
)
async def test_oip_infer_rejects_bad_parameters_and_outputs(
    client, windows, parameters, outputs, word
):
    requested = [triton.InferRequestedOutput(name) for name in outputs or ()]

    code, message = await status_of(
        client.infer(
            MODEL, inputs_of(windows[:1]), outputs=requested or None, parameters=parameters
        )
    )

    assert code == "StatusCode.INVALID_ARGUMENT"
    assert word in message, message


async def test_oip_server_stays_up_after_rejections(client, windows):
    await status_of(client.infer(MODEL, inputs_of(windows[:1].astype(np.float64), "FP64")))

    result = await client.infer(MODEL, inputs_of(windows[:1]))

    assert result.as_numpy("forecast").shape[0] == 1


# -------------------------------------------------------------------------------------------
# Without tritonclient: typed contents and raw byte lengths through the generated stubs
# -------------------------------------------------------------------------------------------


def raw_request(windows: np.ndarray, **fields) -> oip_pb.ModelInferRequest:
    tensor = oip_pb.ModelInferRequest.InferInputTensor(
        name="windows", datatype="FP32", shape=list(windows.shape)
    )
    return oip_pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], **fields)


def with_typed(request: oip_pb.ModelInferRequest, values: np.ndarray) -> oip_pb.ModelInferRequest:
    """``request`` with ``values`` as its input's typed ``fp32_contents``."""
    request.inputs[0].contents.fp32_contents.extend(values.ravel().tolist())
    return request


async def test_oip_typed_fp32_contents_equal_raw_contents(channel, windows, artifacts):
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    batch = windows[:4]
    typed = with_typed(raw_request(batch), batch)
    raw = raw_request(batch, raw_input_contents=[batch.astype("<f4").tobytes()])

    typed_answer = await stub.ModelInfer(typed, timeout=TIMEOUT)
    raw_answer = await stub.ModelInfer(raw, timeout=TIMEOUT)

    assert typed_answer.raw_output_contents == raw_answer.raw_output_contents
    (output,) = typed_answer.outputs
    assert (output.name, output.datatype, list(output.shape)) == (
        "forecast",
        "FP32",
        [4, artifacts.horizon],
    )
    assert not output.HasField("contents")  # answers in raw_output_contents only
    forecast = np.frombuffer(typed_answer.raw_output_contents[0], "<f4")
    assert forecast.size == 4 * artifacts.horizon


@pytest.mark.parametrize(
    ("make", "word"),
    [
        (lambda b: raw_request(b, raw_input_contents=[b.astype("<f4").tobytes()[:-4]]), "bytes"),
        (lambda b: raw_request(b), "no contents"),
        (
            lambda b: with_typed(raw_request(b, raw_input_contents=[b.tobytes()]), b),
            "both raw_input_contents and typed contents",
        ),
        (lambda b: with_typed(raw_request(b), b.ravel()[:-1]), "fp32_contents values"),
    ],
    ids=["raw-bytes-short", "no-contents", "raw-and-typed", "typed-count"],
)
async def test_oip_contents_that_do_not_fit_the_shape_are_invalid(channel, windows, make, word):
    stub = oip_grpc.GRPCInferenceServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(make(windows[:2]), timeout=TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'windows'" in caught.value.details() and word in caught.value.details()


async def test_oip_service_is_listed_by_reflection(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=OIP_SERVICE_NAME),
    ]

    listed, described = [r async for r in stub.ServerReflectionInfo(iter(requests))]

    names = {service.name for service in listed.list_services_response.service}
    assert OIP_SERVICE_NAME in names and "forecast.v1.ForecastService" in names
    assert described.file_descriptor_response.file_descriptor_proto


# -------------------------------------------------------------------------------------------
# Auth, request metrics and realized accuracy: the same as forecast.v1's
# -------------------------------------------------------------------------------------------


async def test_oip_requires_the_bearer_token(guarded, windows):
    running, _ = guarded
    triton_client = await open_client(running)
    try:
        missing = await status_of(triton_client.infer(MODEL, inputs_of(windows[:1])))
        wrong = await status_of(
            triton_client.infer(
                MODEL, inputs_of(windows[:1]), headers={"authorization": "Bearer nope"}
            )
        )
        ready = await status_of(triton_client.is_server_ready())
        result = await triton_client.infer(MODEL, inputs_of(windows[:1]), headers=AUTH)
        ready_with_token = await triton_client.is_server_ready(headers=AUTH)
    finally:
        await triton_client.close()

    assert missing[0] == wrong[0] == ready[0] == "StatusCode.UNAUTHENTICATED"
    assert result.as_numpy("forecast").shape[0] == 1
    assert ready_with_token


async def test_oip_model_infer_goes_into_the_request_metrics(guarded, windows):
    running, registry = guarded

    def requests(code: str) -> float:
        value = registry.get_sample_value(
            "forecast_requests_total", {"method": "ModelInfer", "code": code}
        )
        assert value is not None, f"no ModelInfer series for {code}"
        return value

    before = {code: requests(code) for code in ("OK", "INVALID_ARGUMENT", "UNAUTHENTICATED")}
    triton_client = await open_client(running)
    try:
        await triton_client.infer(MODEL, inputs_of(windows[:2]), headers=AUTH)
        bad = inputs_of(windows[:1].astype(np.float64), "FP64")
        await status_of(triton_client.infer(MODEL, bad, headers=AUTH))
        await status_of(triton_client.infer(MODEL, inputs_of(windows[:1])))
        await triton_client.is_server_ready(headers=AUTH)
    finally:
        await triton_client.close()

    assert requests("OK") - before["OK"] == 1
    assert requests("INVALID_ARGUMENT") - before["INVALID_ARGUMENT"] == 1
    assert requests("UNAUTHENTICATED") - before["UNAUTHENTICATED"] == 1
    # Probes are not requests.
    for method in ("ServerReady", "ServerLive", "ModelReady"):
        assert (
            registry.get_sample_value("forecast_requests_total", {"method": method, "code": "OK"})
            is None
        )


def consecutive_windows(window: int, first_end: int, count: int) -> np.ndarray:
    """``count`` windows of the built-in series ending at consecutive rows."""
    steps = 1500
    values, _, _ = impute(synthetic_series(steps).values, (0, steps))
    ends = np.arange(first_end, first_end + count)
    return sliding_windows(values, window, ends).astype(np.float32)


async def test_oip_sequence_id_feeds_realized_accuracy(guarded, artifacts):
    running, registry = guarded
    get = registry.get_sample_value

    def windows_total(outcome: str) -> float:
        return get("forecast_realized_windows_total", {"outcome": outcome}) or 0.0

    before = {o: windows_total(o) for o in ("new", "continued")}
    values_before = get("forecast_realized_values_total") or 0.0
    series = consecutive_windows(artifacts.window, 400, 3)
    triton_client = await open_client(running)
    try:
        for i in range(len(series)):
            await triton_client.infer(
                MODEL,
                inputs_of(series[i : i + 1]),
                sequence_id="oip-series",
                headers=AUTH,
            )
        # An integer id, as tritonclient sends one, is a series of its own.
        await triton_client.infer(MODEL, inputs_of(series[:1]), sequence_id=17, headers=AUTH)
    finally:
        await triton_client.close()

    assert windows_total("new") - before["new"] == 2
    assert windows_total("continued") - before["continued"] == 2
    assert (get("forecast_realized_values_total") or 0.0) - values_before == 2


async def test_forecast_v1_stub_still_works_beside_tritonclient(stub, windows):
    """tritonclient registers the same ``inference.*`` names in protobuf's default pool: both
    live in this process, as the service's own OIP stubs use a pool of their own."""
    from tritonclient.grpc import service_pb2

    assert service_pb2.DESCRIPTOR.package == oip_pb.DESCRIPTOR.package == "inference"
    assert service_pb2.DESCRIPTOR.pool is not oip_pb.DESCRIPTOR.pool
    response = await stub.Forecast(request_from_windows(windows[:1]), timeout=TIMEOUT)
    assert len(response.predictions) == 1


def test_oip_proto_matches_tritonclient_field_for_field():
    """Every message of the vendored proto has, field by field, the names, numbers, types and
    repetition of the same message in tritonclient's own proto (Triton's superset of the spec), but
    for ModelMetadataResponse.properties, which Triton does not have."""
    from tritonclient.grpc import service_pb2

    def fields(message) -> dict[int, tuple[str, int, bool, str]]:
        return {
            f.number: (f.name, f.type, f.is_repeated, f.message_type.name if f.message_type else "")
            for f in message.fields
        }

    def walk(message):
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    compared = 0
    for top in oip_pb.DESCRIPTOR.message_types_by_name.values():
        for message in walk(top):
            if message.full_name == "inference.ModelMetadataResponse.PropertiesEntry":
                continue  # the map entry of properties
            theirs = service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(message.full_name)
            ours = fields(message)
            if message.full_name == "inference.ModelMetadataResponse":
                assert ours.pop(6)[0] == "properties"
            assert ours == fields(theirs), message.full_name
            compared += 1
    service = oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    triton_service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        other = triton_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
    assert compared >= 20
