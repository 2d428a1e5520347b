"""Serving: ``python -m service``, a gRPC forecasting server over the trained artifacts."""
