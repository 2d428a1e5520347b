"""Benchmarks: load generators and measurements, run side by side on one machine."""
