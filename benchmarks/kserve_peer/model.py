"""``ForecastModel``: a ``kserve.Model`` that answers the Open Inference Protocol with the
served version's forecasts.

What a KServe user writes for this model: load the version (the checksummed Keras model and
the fitted scaler, with the manifest's transform), run the model in a ``tf.function``, and in
``predict`` turn the ``windows`` input into forecasts in target units. The transform (scaling,
input channels, the inverse transform of the model's output) is the training package's, as
in the service, so both answer the same numbers for the same windows. The model runs once per
request on that request's windows (no batching across requests): KServe calls a synchronous
``predict`` on its event loop, one request at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from kserve import InferOutput, InferRequest, InferResponse, Model  # type: ignore[import-not-found]
from kserve.errors import InvalidInput  # type: ignore[import-not-found]

from training.artifacts import load_artifacts

INPUT = "windows"
OUTPUT = "forecast"
DATATYPE = "FP32"


class ForecastModel(Model):
    def __init__(self, name: str, artifacts: Path, *, jit_compile: bool = True):
        super().__init__(name)
        self._path = artifacts
        self._jit_compile = jit_compile

    def load(self) -> bool:
        """Load and verify the version; compile nothing yet (see :meth:`warm_up`)."""
        artifacts = load_artifacts(self._path)
        self.version = artifacts.version
        self.transform = artifacts.transform()
        model = artifacts.model
        spec = tf.TensorSpec([None, self.transform.steps, self.transform.channels], tf.float32)

        @tf.function(input_signature=[spec], jit_compile=self._jit_compile)
        def call(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)

        self._call = call
        self.ready = True
        return self.ready

    def warm_up(self, sizes: tuple[int, ...]) -> None:
        """Run ``sizes`` windows once each (with XLA, each batch size compiles on first use)."""
        shape = (self.transform.window, self.transform.n_features)
        for n in sizes:
            self.forecast(np.zeros((n, *shape), np.float32))

    def forecast(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows ``[n, window, features]`` -> forecasts ``[n, horizon]`` float32, in
        target units."""
        x, anchors = self.transform.encode_windows(windows)
        raw = self._call(x).numpy()
        return self.transform.decode(raw, anchors).astype(np.float32)

    def get_input_types(self) -> list[dict[str, Any]]:
        shape = [-1, self.transform.window, self.transform.n_features]
        return [{"name": INPUT, "datatype": DATATYPE, "shape": shape}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": OUTPUT, "datatype": DATATYPE, "shape": [-1, self.transform.horizon]}]

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> Any:
        forecasts = self.forecast(self._windows(payload))
        output = InferOutput(name=OUTPUT, shape=list(forecasts.shape), datatype=DATATYPE)
        output.set_data_from_numpy(forecasts, binary_data=True)  # raw_output_contents
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            model_version=self.version,
            infer_outputs=[output],
        )

    def _windows(self, payload: InferRequest) -> np.ndarray:
        """The request's one input, checked: ``windows`` FP32 ``[n, window, features]``."""
        expected = [self.transform.window, self.transform.n_features]
        if [tensor.name for tensor in payload.inputs] != [INPUT]:
            raise InvalidInput(f"expected one input '{INPUT}'")
        tensor = payload.inputs[0]
        if tensor.datatype != DATATYPE or len(tensor.shape) != 3 or tensor.shape[1:] != expected:
            raise InvalidInput(
                f"input '{INPUT}' must be {DATATYPE} [-1, {expected[0]}, {expected[1]}]; got "
                f"{tensor.datatype} {list(tensor.shape)}"
            )
        windows: np.ndarray = tensor.as_numpy()
        if not np.isfinite(windows).all():
            raise InvalidInput(f"input '{INPUT}' holds NaN or infinite values")
        return windows
