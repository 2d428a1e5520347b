from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Window(_message.Message):
    __slots__ = ("values", "series_id")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    series_id: str
    def __init__(self, values: _Optional[_Iterable[float]] = ..., series_id: _Optional[str] = ...) -> None: ...

class ForecastRequest(_message.Message):
    __slots__ = ("windows", "levels")
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[Window]
    levels: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ..., levels: _Optional[_Iterable[float]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("level", "lo", "hi")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    level: float
    lo: _containers.RepeatedScalarFieldContainer[float]
    hi: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, level: _Optional[float] = ..., lo: _Optional[_Iterable[float]] = ..., hi: _Optional[_Iterable[float]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("values", "intervals")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INTERVALS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    intervals: _containers.RepeatedCompositeFieldContainer[Interval]
    def __init__(self, values: _Optional[_Iterable[float]] = ..., intervals: _Optional[_Iterable[_Union[Interval, _Mapping]]] = ...) -> None: ...

class ForecastResponse(_message.Message):
    __slots__ = ("predictions", "model_version")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    model_version: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SplitMetrics(_message.Message):
    __slots__ = ("mae", "rmse", "persistence_mae", "mean_forecast_mae", "std_ratio", "windows")
    MAE_FIELD_NUMBER: _ClassVar[int]
    RMSE_FIELD_NUMBER: _ClassVar[int]
    PERSISTENCE_MAE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FORECAST_MAE_FIELD_NUMBER: _ClassVar[int]
    STD_RATIO_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    mae: float
    rmse: float
    persistence_mae: float
    mean_forecast_mae: float
    std_ratio: float
    windows: int
    def __init__(self, mae: _Optional[float] = ..., rmse: _Optional[float] = ..., persistence_mae: _Optional[float] = ..., mean_forecast_mae: _Optional[float] = ..., std_ratio: _Optional[float] = ..., windows: _Optional[int] = ...) -> None: ...

class FeatureReference(_message.Message):
    __slots__ = ("name", "mean", "std", "min", "max", "raw_mean", "raw_std")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    RAW_MEAN_FIELD_NUMBER: _ClassVar[int]
    RAW_STD_FIELD_NUMBER: _ClassVar[int]
    name: str
    mean: float
    std: float
    min: float
    max: float
    raw_mean: float
    raw_std: float
    def __init__(self, name: _Optional[str] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., raw_mean: _Optional[float] = ..., raw_std: _Optional[float] = ...) -> None: ...

class BaselineScore(_message.Message):
    __slots__ = ("name", "period", "val_mae", "test_mae", "statistical")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    VAL_MAE_FIELD_NUMBER: _ClassVar[int]
    TEST_MAE_FIELD_NUMBER: _ClassVar[int]
    STATISTICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    period: int
    val_mae: float
    test_mae: float
    statistical: bool
    def __init__(self, name: _Optional[str] = ..., period: _Optional[int] = ..., val_mae: _Optional[float] = ..., test_mae: _Optional[float] = ..., statistical: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "feature_names", "target", "window", "horizon", "target_mode", "validation", "test", "features", "max_windows_per_request", "created_at", "device", "baselines", "best_statistical_baseline", "best_statistical_baseline_beats_model", "seasonal_periods", "one_step_validation_mae", "one_step_test_mae", "intervals")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOWS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BASELINES_FIELD_NUMBER: _ClassVar[int]
    BEST_STATISTICAL_BASELINE_FIELD_NUMBER: _ClassVar[int]
    BEST_STATISTICAL_BASELINE_BEATS_MODEL_FIELD_NUMBER: _ClassVar[int]
    SEASONAL_PERIODS_FIELD_NUMBER: _ClassVar[int]
    ONE_STEP_VALIDATION_MAE_FIELD_NUMBER: _ClassVar[int]
    ONE_STEP_TEST_MAE_FIELD_NUMBER: _ClassVar[int]
    INTERVALS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    target: str
    window: int
    horizon: int
    target_mode: str
    validation: SplitMetrics
    test: SplitMetrics
    features: _containers.RepeatedCompositeFieldContainer[FeatureReference]
    max_windows_per_request: int
    created_at: str
    device: str
    baselines: _containers.RepeatedCompositeFieldContainer[BaselineScore]
    best_statistical_baseline: str
    best_statistical_baseline_beats_model: bool
    seasonal_periods: _containers.RepeatedScalarFieldContainer[int]
    one_step_validation_mae: float
    one_step_test_mae: float
    intervals: _containers.RepeatedCompositeFieldContainer[IntervalScore]
    def __init__(self, model_version: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ..., window: _Optional[int] = ..., horizon: _Optional[int] = ..., target_mode: _Optional[str] = ..., validation: _Optional[_Union[SplitMetrics, _Mapping]] = ..., test: _Optional[_Union[SplitMetrics, _Mapping]] = ..., features: _Optional[_Iterable[_Union[FeatureReference, _Mapping]]] = ..., max_windows_per_request: _Optional[int] = ..., created_at: _Optional[str] = ..., device: _Optional[str] = ..., baselines: _Optional[_Iterable[_Union[BaselineScore, _Mapping]]] = ..., best_statistical_baseline: _Optional[str] = ..., best_statistical_baseline_beats_model: _Optional[bool] = ..., seasonal_periods: _Optional[_Iterable[int]] = ..., one_step_validation_mae: _Optional[float] = ..., one_step_test_mae: _Optional[float] = ..., intervals: _Optional[_Iterable[_Union[IntervalScore, _Mapping]]] = ...) -> None: ...

class IntervalScore(_message.Message):
    __slots__ = ("level", "coverage", "mean_width")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    MEAN_WIDTH_FIELD_NUMBER: _ClassVar[int]
    level: float
    coverage: float
    mean_width: float
    def __init__(self, level: _Optional[float] = ..., coverage: _Optional[float] = ..., mean_width: _Optional[float] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "status", "created_at", "test", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: str
    status: str
    created_at: str
    test: SplitMetrics
    reason: str
    def __init__(self, version: _Optional[str] = ..., status: _Optional[str] = ..., created_at: _Optional[str] = ..., test: _Optional[_Union[SplitMetrics, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "serving_version", "artifacts")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    serving_version: str
    artifacts: str
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., serving_version: _Optional[str] = ..., artifacts: _Optional[str] = ...) -> None: ...

class SetServingVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class SetServingVersionResponse(_message.Message):
    __slots__ = ("model_version", "previous_version")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    previous_version: str
    def __init__(self, model_version: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...
