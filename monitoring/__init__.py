"""Monitoring: streaming collapse and input-drift detectors, and their Prometheus metrics.

This package receives plain numbers (numpy arrays) and knows nothing about gRPC or TensorFlow.
"""
