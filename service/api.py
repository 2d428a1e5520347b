"""The generated protobuf and gRPC modules under short names (``make proto`` regenerates them),
and the names the rest of the service takes from the proto."""

from service._proto.forecast.v1 import forecast_pb2 as pb
from service._proto.forecast.v1 import forecast_pb2_grpc as pb_grpc

_FORECAST_SERVICE = pb.DESCRIPTOR.services_by_name["ForecastService"]

SERVICE_NAME: str = _FORECAST_SERVICE.full_name
ADMIN_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
# The forecast service's RPC names, in proto order: the request metrics' `method` label values.
FORECAST_METHODS: tuple[str, ...] = tuple(method.name for method in _FORECAST_SERVICE.methods)

__all__ = ["pb", "pb_grpc", "SERVICE_NAME", "ADMIN_SERVICE_NAME", "FORECAST_METHODS"]
