"""Prometheus metrics and health endpoints (--metrics-listen)."""
