"""Logs, metrics and traces: the service's own view of itself."""
