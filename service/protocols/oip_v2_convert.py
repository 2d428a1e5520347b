"""Open Inference Protocol (v2) tensors and parameters <-> numpy, with the request validation.

The model, as the protocol sees it:

- input ``windows``: FP32 ``[-1, window, features]``, raw units, as ``raw_input_contents``
  (row-major little-endian bytes) or as the typed ``contents.fp32_contents``;
- output ``forecast``: FP32 ``[-1, horizon]``, target units; with the request parameter
  ``levels`` (``"80,95"``), also ``lo_80``, ``hi_80``, ... of the same shape, in that order;
  always as ``raw_output_contents`` (tritonclient's ``as_numpy`` reads only those);
- request parameter ``sequence_id`` (string or integer, as tritonclient sends it): the series id
  of every window of the request, for realized accuracy. Other parameters (``sequence_start``,
  ``sequence_end``, ``priority``, ...) are accepted and ignored.

The checks are :mod:`service.validation`'s, their messages prefixed with the input or
parameter they are about. No model, no gRPC server code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from service.api import oip_pb
from service.core import Answer
from service.errors import InvalidRequest
from service.forecaster import Forecaster
from service.validation import (
    MAX_SERIES_ID_BYTES,
    check_finite,
    check_levels,
    check_window_count,
    series_id_too_long,
)

INPUT = "windows"
OUTPUT = "forecast"
DATATYPE = "FP32"
WIRE_DTYPE = np.dtype("<f4")  # FP32, row-major, little-endian
LEVELS = "levels"
SEQUENCE_ID = "sequence_id"
PLATFORM = "tensorflow_keras"

Parameters = Mapping[str, oip_pb.InferParameter]


@dataclass(frozen=True)
class InferRequest:
    """A ``ModelInferRequest``, converted and checked."""

    windows: np.ndarray  # [n, window, features] float32, raw units
    levels: tuple[float, ...]  # percent, in request order; empty: no intervals
    series_ids: list[str] | None  # one per window, all the same; None: untracked
    outputs: tuple[str, ...]  # the output tensors to answer with, in order


@contextmanager
def _about(subject: str) -> Iterator[None]:
    """Prefix a validation error's message with what it is about (``input 'windows'``)."""
    try:
        yield
    except InvalidRequest as exc:
        raise type(exc)(f"{subject}: {exc}") from None


def interval_outputs(level: float) -> tuple[str, str]:
    """The lower and upper bound outputs of ``level``: ``("lo_80", "hi_80")``."""
    return f"lo_{level:g}", f"hi_{level:g}"


def output_names(levels: tuple[float, ...]) -> tuple[str, ...]:
    """Every output a request with ``levels`` can have, in answer order."""
    return (OUTPUT, *(name for level in levels for name in interval_outputs(level)))


def infer_request(
    request: oip_pb.ModelInferRequest, *, window: int, n_features: int, max_windows: int
) -> InferRequest:
    """Raises :class:`InvalidRequest` (or :class:`~service.errors.InvalidWindow`) naming the
    input, parameter or output at fault."""
    windows = _windows(request, window=window, n_features=n_features, max_windows=max_windows)
    levels = _levels(request.parameters)
    return InferRequest(
        windows,
        levels,
        _series_ids(request.parameters, len(windows)),
        _requested_outputs(request, levels),
    )


def _windows(
    request: oip_pb.ModelInferRequest, *, window: int, n_features: int, max_windows: int
) -> np.ndarray:
    names = [tensor.name for tensor in request.inputs]
    if names != [INPUT]:
        unexpected = [name for name in names if name != INPUT]
        problem = f"unexpected input '{unexpected[0]}'" if unexpected else f"no input '{INPUT}'"
        raise InvalidRequest(
            f"request has {problem}; the model takes one input, '{INPUT}' "
            f"{DATATYPE} [-1, {window}, {n_features}]"
        )
    tensor = request.inputs[0]
    with _about(f"input '{INPUT}'"):
        if tensor.datatype != DATATYPE:
            raise InvalidRequest(f"datatype is {tensor.datatype or 'empty'}; expected {DATATYPE}")
        shape = list(tensor.shape)
        if len(shape) != 3 or shape[0] < 0 or shape[1:] != [window, n_features]:
            raise InvalidRequest(
                f"shape is {shape}; expected [-1, {window}, {n_features}] "
                "(windows x timesteps x features)"
            )
        count = shape[0]
        check_window_count(count, max_windows)
        values = _contents(request, tensor, count * window * n_features)
        windows = values.reshape(count, window, n_features)
        check_finite(windows)
    return windows


def _contents(
    request: oip_pb.ModelInferRequest,
    tensor: oip_pb.ModelInferRequest.InferInputTensor,
    size: int,
) -> np.ndarray:
    """The tensor's ``size`` values, float32: from its raw bytes (read-only, not copied) or from
    its typed ``fp32_contents``."""
    raw = request.raw_input_contents
    typed = tensor.HasField("contents")
    if raw and typed:
        raise InvalidRequest("both raw_input_contents and typed contents are set; send one")
    if raw:
        if len(raw) != 1:
            raise InvalidRequest(f"request has {len(raw)} raw_input_contents for 1 input")
        data = raw[0]
        expected = size * WIRE_DTYPE.itemsize
        if len(data) != expected:
            raise InvalidRequest(
                f"raw contents are {len(data)} bytes; its shape and datatype take {expected}"
            )
        return np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.float32, copy=False)
    if not typed:
        raise InvalidRequest("has no contents: send raw_input_contents or contents.fp32_contents")
    contents = tensor.contents
    others = [field.name for field, _ in contents.ListFields() if field.name != "fp32_contents"]
    if others:
        raise InvalidRequest(f"contents are in {others[0]}; {DATATYPE} takes fp32_contents")
    values = contents.fp32_contents
    if len(values) != size:
        raise InvalidRequest(
            f"contents have {len(values)} fp32_contents values; its shape takes {size}"
        )
    return np.array(values, dtype=np.float32)


def _levels(parameters: Parameters) -> tuple[float, ...]:
    """The ``levels`` parameter: ``"80,95"`` (or one number), checked; empty when absent."""
    if LEVELS not in parameters:
        return ()
    parameter = parameters[LEVELS]
    kind = parameter.WhichOneof("parameter_choice")
    with _about(f"parameter '{LEVELS}'"):
        if kind == "string_param":
            text = parameter.string_param.strip()
            levels = tuple(_percent(part) for part in text.split(",")) if text else ()
        elif kind in ("double_param", "int64_param", "uint64_param"):
            levels = (float(getattr(parameter, kind)),)
        else:
            raise InvalidRequest('expected a string of percents such as "80,95"')
        return check_levels(levels)


def _percent(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(
            f'{text.strip()!r} is not a number; send percents such as "80,95"'
        ) from None


def _series_ids(parameters: Parameters, count: int) -> list[str] | None:
    """``sequence_id`` as the series id of each of the ``count`` windows; None when absent,
    empty or 0 (Triton's "no sequence")."""
    if SEQUENCE_ID not in parameters:
        return None
    parameter = parameters[SEQUENCE_ID]
    kind = parameter.WhichOneof("parameter_choice")
    if kind == "string_param":
        series_id = parameter.string_param
    elif kind in ("int64_param", "uint64_param"):
        number = getattr(parameter, kind)
        series_id = str(number) if number else ""
    else:
        raise InvalidRequest(f"parameter '{SEQUENCE_ID}': expected a string or an integer")
    if not series_id:
        return None
    size = series_id_too_long(series_id)
    if size is not None:
        raise InvalidRequest(
            f"parameter '{SEQUENCE_ID}' is {size} bytes; the limit is {MAX_SERIES_ID_BYTES}"
        )
    return [series_id] * count


def _requested_outputs(
    request: oip_pb.ModelInferRequest, levels: tuple[float, ...]
) -> tuple[str, ...]:
    """The outputs asked for (every one when none is named), each known."""
    available = output_names(levels)
    if not request.outputs:
        return available
    requested = tuple(dict.fromkeys(output.name for output in request.outputs))
    for name in requested:
        if name not in available:
            hint = (
                f" (interval outputs need the parameter '{LEVELS}', e.g. \"80,95\" for "
                "lo_80, hi_80, lo_95 and hi_95)"
                if name.startswith(("lo_", "hi_"))
                else ""
            )
            raise InvalidRequest(
                f"unknown output '{name}'; this request has {', '.join(available)}{hint}"
            )
    return requested


def infer_response(
    answer: Answer, *, model_name: str, request_id: str, outputs: tuple[str, ...]
) -> oip_pb.ModelInferResponse:
    """The ``outputs`` of ``answer``, each FP32 ``[n, horizon]`` in ``raw_output_contents``."""
    tensors = {OUTPUT: answer.forecasts}
    if answer.intervals is not None:
        for k, level in enumerate(answer.intervals.levels):
            lo, hi = interval_outputs(level)
            tensors[lo] = answer.intervals.lo[:, k, :]
            tensors[hi] = answer.intervals.hi[:, k, :]
    shape = list(answer.forecasts.shape)
    return oip_pb.ModelInferResponse(
        model_name=model_name,
        model_version=answer.version,
        id=request_id,
        outputs=[
            oip_pb.ModelInferResponse.InferOutputTensor(name=name, datatype=DATATYPE, shape=shape)
            for name in outputs
        ],
        raw_output_contents=[
            np.ascontiguousarray(tensors[name], dtype=WIRE_DTYPE).tobytes() for name in outputs
        ],
    )


def model_metadata(model_name: str, forecaster: Forecaster) -> oip_pb.ModelMetadataResponse:
    """The served version's tensors (``-1``: any number of windows) and, as properties, what a
    client needs to build windows and ask for intervals."""
    tensor = oip_pb.ModelMetadataResponse.TensorMetadata
    artifacts = forecaster.artifacts
    calibrated = artifacts.manifest.intervals is not None
    return oip_pb.ModelMetadataResponse(
        name=model_name,
        versions=[forecaster.version],
        platform=PLATFORM,
        inputs=[
            tensor(
                name=INPUT, datatype=DATATYPE, shape=[-1, forecaster.window, forecaster.n_features]
            )
        ],
        outputs=[tensor(name=OUTPUT, datatype=DATATYPE, shape=[-1, forecaster.transform.horizon])],
        properties={
            "features": ",".join(artifacts.feature_names),
            "target": artifacts.manifest.target,
            "parameters": (
                f'{LEVELS}: interval levels in percent such as "80,95", adding the outputs '
                f"lo_80, hi_80, lo_95, hi_95 of the forecast's shape; {SEQUENCE_ID}: the "
                "series id of every window, for realized accuracy"
            ),
            "intervals": "calibrated" if calibrated else "none: point forecasts only",
        },
    )
