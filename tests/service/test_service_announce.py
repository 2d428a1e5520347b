"""The start-up lines are written and read by one module: what a server logs, a reader finds."""

from __future__ import annotations

from service import announce


def test_the_ports_a_server_logs_are_the_ports_a_reader_finds():
    text = "\n".join(
        [
            "2026-11-24 12:00:00,000 INFO training.model device: CPU",
            announce.GRPC_LISTENING % ("[::]:0", 50123, "TLS, mTLS") + ", model 20261124T1200Z",
            announce.METRICS_LISTENING % ("127.0.0.1", 39001),
        ]
    )
    assert announce.grpc_port(text) == 50123
    assert announce.metrics_port(text) == 39001


def test_nothing_is_found_before_the_server_has_logged_it():
    assert announce.grpc_port("starting up\n") is None
    assert announce.metrics_port(announce.GRPC_LISTENING % ("0.0.0.0:0", 1, "plaintext")) is None
