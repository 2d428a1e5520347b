"""The generated protobuf and gRPC modules under short names (``make proto`` regenerates them)."""

from service._proto.forecast.v1 import forecast_pb2 as pb
from service._proto.forecast.v1 import forecast_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ForecastService"].full_name

__all__ = ["pb", "pb_grpc", "SERVICE_NAME"]
