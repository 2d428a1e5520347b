"""The start-up lines that tell other processes where a server listens: one format, one parser.

Servers bind port 0 and let the OS choose, so whoever started them (the demo, the benchmarks,
the tests) reads the chosen ports back from these log lines. Writers log with the formats below;
readers match with the patterns below, and nowhere else.
"""

from __future__ import annotations

import re

# log.info(GRPC_LISTENING, address, port, "plaintext")
#   -> "gRPC listening on 127.0.0.1:0 (port 4242, plaintext)"; append more after it if needed."
GRPC_LISTENING = "gRPC listening on %s (port %d, %s)"
METRICS_LISTENING = "Prometheus metrics on http://%s:%d/metrics"

GRPC_PORT = re.compile(r"gRPC listening on \S+ \(port (\d+)")
METRICS_PORT = re.compile(r"Prometheus metrics on http://[^\s/]+:(\d+)/metrics")


def grpc_port(log_text: str) -> int | None:
    """The gRPC port a server logged, or None before it has."""
    match = GRPC_PORT.search(log_text)
    return int(match.group(1)) if match else None


def metrics_port(log_text: str) -> int | None:
    """The /metrics port a server logged, or None before it has (or without metrics)."""
    match = METRICS_PORT.search(log_text)
    return int(match.group(1)) if match else None
