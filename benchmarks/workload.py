"""What the load generator sends: the served version's held-out windows, as serialized requests.

Every system under test that serves a mode's protocol gets byte-for-byte the same request
payloads. Nothing here imports TensorFlow, so the orchestrator and the client processes stay
light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.api import oip_pb, pb
from service.client import request_from_windows
from training.artifacts import resolve_version_dir
from training.manifest import Manifest
from training.replay import NotSyntheticError, manifest_held_out_windows

# The two APIs a system can serve: the service's own, and the Open Inference Protocol (v2).
FORECAST_V1 = "forecast.v1"
OIP_V2 = "oip.v2"
# The model as the Open Inference Protocol names it (the service's default --model-name, and
# the KServe peer's), its one input and its point-forecast output.
OIP_MODEL = "forecast"
OIP_INPUT = "windows"
OIP_OUTPUT = "forecast"
OIP_DATATYPE = "FP32"


@dataclass(frozen=True)
class Mode:
    """One way of calling a server."""

    name: str
    rpc: str  # "unary" (one request, one answer) or "stream" (StreamForecast)
    windows_per_request: int
    label: str
    protocol: str = FORECAST_V1  # FORECAST_V1: Forecast / StreamForecast; OIP_V2: ModelInfer


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("unary", "unary", 1, "Forecast, 1 window/request"),
        Mode("batch64", "unary", 64, "Forecast, 64 windows/request"),
        Mode("batch256", "unary", 256, "Forecast, 256 windows/request"),
        Mode("stream", "stream", 1, "StreamForecast, 1 window/message"),
        Mode("oip1", "unary", 1, "OIP v2 ModelInfer, 1 window/request", OIP_V2),
        Mode("oip256", "unary", 256, "OIP v2 ModelInfer, 256 windows/request", OIP_V2),
    )
}

# Distinct payloads each client cycles through, bounded so a client holds at most ~4 MB of them.
MAX_PAYLOAD_WINDOWS = 4096


class WorkloadError(Exception):
    """The version cannot be benchmarked with its own held-out data (one-line message)."""


@dataclass(frozen=True)
class ModelShape:
    version: str
    window: int
    horizon: int
    feature_names: tuple[str, ...]


def model_shape(artifacts: Path) -> tuple[Path, ModelShape, Manifest]:
    """Resolve and verify a version (format and checksums only; nothing is deserialised)."""
    version_dir = resolve_version_dir(artifacts)
    manifest = Manifest.load(version_dir)
    shape = ModelShape(
        version=manifest.version,
        window=manifest.window,
        horizon=manifest.horizon,
        feature_names=manifest.feature_names,
    )
    return version_dir, shape, manifest


def held_out(manifest: Manifest) -> np.ndarray:
    """Raw validation + test windows ``[n, window, F]`` float32 (the wire precision)."""
    try:
        return manifest_held_out_windows(manifest).astype(np.float32)
    except NotSyntheticError as exc:
        raise WorkloadError(str(exc)) from None


def batches(windows: np.ndarray, per_request: int) -> list[np.ndarray]:
    """Consecutive held-out windows per request, wrapping around; the same list every call."""
    n = len(windows)
    count = max(1, min(n, MAX_PAYLOAD_WINDOWS // per_request))
    return [windows[np.arange(i * per_request, (i + 1) * per_request) % n] for i in range(count)]


def payloads(windows: np.ndarray, per_request: int, protocol: str = FORECAST_V1) -> list[bytes]:
    """Serialized requests: ``ForecastRequest`` messages, built with the service's own client
    code, or ``ModelInferRequest`` messages (:func:`infer_request`)."""
    build = request_from_windows if protocol == FORECAST_V1 else infer_request
    return [build(batch).SerializeToString() for batch in batches(windows, per_request)]


def infer_request(windows: np.ndarray) -> oip_pb.ModelInferRequest:
    """One Open Inference Protocol request for ``windows`` ``[n, window, F]``: the input as
    row-major little-endian FP32 bytes in ``raw_input_contents``, as tritonclient sends it."""
    tensor = oip_pb.ModelInferRequest.InferInputTensor(
        name=OIP_INPUT, datatype=OIP_DATATYPE, shape=list(windows.shape)
    )
    return oip_pb.ModelInferRequest(
        model_name=OIP_MODEL,
        inputs=[tensor],
        raw_input_contents=[np.ascontiguousarray(windows, dtype="<f4").tobytes()],
    )


def infer_forecasts(response: oip_pb.ModelInferResponse) -> np.ndarray | None:
    """The ``forecast`` output of a ``ModelInferResponse`` as ``[n, horizon]`` float32, or None
    when the response does not carry it as one FP32 tensor in ``raw_output_contents``."""
    names = [output.name for output in response.outputs]
    if OIP_OUTPUT not in names or len(response.raw_output_contents) != len(names):
        return None
    k = names.index(OIP_OUTPUT)
    output, raw = response.outputs[k], response.raw_output_contents[k]
    shape = list(output.shape)
    if output.datatype != OIP_DATATYPE or len(shape) != 2 or len(raw) != 4 * shape[0] * shape[1]:
        return None
    return np.frombuffer(raw, dtype="<f4").reshape(shape)


# Series each lane cycles through, for every position of a request: a unary lane sends its 8
# series in turn (each then gets tens of windows per measured point), a 64-window request holds
# one window of each of 64 series.
SERIES_PER_LANE = 8


class SeriesPayloads:
    """Requests whose windows carry a ``series_id``, lane by lane: the ``i``-th request of a lane
    holds, at each position ``p``, the next window of series ``(lane, p, i mod J)``, and each
    series gets consecutive held-out windows, so every window continues its series' last one
    (what costs the realized-accuracy tracking most; a series wraps around to the first held-out
    window once per pass). A lane keeps its place from one point to the next, so its series go
    on continuing, on whichever server they were last sent to, with a gap of the windows sent
    to the other one meanwhile.

    Requests are built on the fly from the windows' pre-serialized values: a ``Window`` message
    is its values field followed by its series_id field, and a request is its windows, each
    tagged as field 1."""

    def __init__(self, windows: np.ndarray, per_request: int):
        flat = np.asarray(windows, dtype=np.float32).reshape(len(windows), -1)
        self.values = [pb.Window(values=row).SerializeToString() for row in flat.tolist()]
        self.per_request = per_request
        self.series = max(1, SERIES_PER_LANE // per_request)  # J
        self.stride = max(1, len(windows) // (per_request * self.series))
        self._lanes: dict[str, SeriesLane] = {}

    def lane(self, key: str) -> SeriesLane:
        """The lane named ``key`` (the same object every time: it keeps its place)."""
        return self._lanes.setdefault(key, SeriesLane(self, key))


class SeriesLane:
    """One lane's requests, read like a list of payloads (``lane[i % len(lane)]``), except that
    each read returns the lane's next request whatever the index."""

    def __init__(self, payloads: SeriesPayloads, key: str):
        self._payloads = payloads
        self._sent = 0
        # Per position and series: the window's field header (sized for values plus this id)
        # and its series_id field.
        size = len(payloads.values[0])
        fields = (
            pb.Window(series_id=f"{key}-{p}-{s}").SerializeToString()
            for p in range(payloads.per_request)
            for s in range(payloads.series)
        )
        self._parts = [(_header(size + len(field)), field) for field in fields]

    def __len__(self) -> int:
        return len(self._payloads.values) * self._payloads.series

    def __getitem__(self, _index: int) -> bytes:
        payloads = self._payloads
        j, n = payloads.series, len(payloads.values)
        s, step = self._sent % j, self._sent // j
        self._sent += 1
        parts: list[bytes] = []
        for p in range(payloads.per_request):
            series = p * j + s
            header, field = self._parts[series]
            parts += (header, payloads.values[(series * payloads.stride + step) % n], field)
        return b"".join(parts)


def _header(length: int) -> bytes:
    """The tag and length of a ``ForecastRequest.windows`` element of ``length`` bytes."""
    out = bytearray(b"\x0a")
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)
