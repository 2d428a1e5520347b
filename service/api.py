"""The generated protobuf and gRPC modules under short names (``make proto`` regenerates them),
and the names the rest of the service takes from the protos."""

from service._proto.forecast.v1 import forecast_pb2 as pb
from service._proto.forecast.v1 import forecast_pb2_grpc as pb_grpc
from service._proto.inference import open_inference_grpc_pb2 as oip_pb
from service._proto.inference import open_inference_grpc_pb2_grpc as oip_grpc

_FORECAST_SERVICE = pb.DESCRIPTOR.services_by_name["ForecastService"]
_OIP_SERVICE = oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]

SERVICE_NAME: str = _FORECAST_SERVICE.full_name
ADMIN_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
OIP_SERVICE_NAME: str = _OIP_SERVICE.full_name
# The forecast service's RPC names, in proto order.
FORECAST_METHODS: tuple[str, ...] = tuple(method.name for method in _FORECAST_SERVICE.methods)
# The Open Inference Protocol's inference RPC; its liveness, readiness and metadata RPCs are
# probes, kept out of the request metrics like gRPC health.
OIP_INFER_METHOD = "ModelInfer"
# The request metrics' `method` label values.
REQUEST_METHODS: tuple[str, ...] = (*FORECAST_METHODS, OIP_INFER_METHOD)
# The Open Inference Protocol's probes (full method paths): answered while draining, like
# gRPC health, so that they report not ready instead of failing.
OIP_PROBES: tuple[str, ...] = tuple(
    f"/{OIP_SERVICE_NAME}/{name}" for name in ("ServerLive", "ServerReady", "ModelReady")
)

__all__ = [
    "pb",
    "pb_grpc",
    "oip_pb",
    "oip_grpc",
    "SERVICE_NAME",
    "ADMIN_SERVICE_NAME",
    "OIP_SERVICE_NAME",
    "FORECAST_METHODS",
    "OIP_INFER_METHOD",
    "REQUEST_METHODS",
    "OIP_PROBES",
]
