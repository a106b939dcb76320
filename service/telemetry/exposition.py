"""Serving the metrics catalogue (telemetry/metrics.py) to Prometheus.

Two kinds of process export it:
- the API (`GET /metrics`) may run several uvicorn workers, so it uses prometheus-client's
  multiprocess mode: the CLI points PROMETHEUS_MULTIPROC_DIR at a fresh directory before any
  metric exists, each worker process writes its values to mmap files there, and the scrape
  merges them. Gauges say how they merge (`livesum`: processes that exited are dropped).
- a download worker is one process (downloads run in threads), so it keeps the default
  in-memory registry and serves it with `start_http_server` on WORKER_METRICS_PORT.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from service.telemetry.metrics import WORKER_RUNNING, WORKER_SLOTS, RequestCounter, record_process_start


def api_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What `GET /metrics` renders: every API process's values merged, plus `extra` collectors."""
    registry = CollectorRegistry()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        source: Collector = multiprocess.MultiProcessCollector(None)
    else:
        from prometheus_client import REGISTRY

        source = _Delegate(REGISTRY)
    registry.register(RequestCounter(source))
    for collector in extra:
        registry.register(collector)
    return registry


class _Delegate(Collector):
    """Expose another registry's metrics inside ours (single-process API)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        return iter(self.source.collect())


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def mark_process_dead(pid: int | None = None) -> None:
    """Drop an exiting API process's live gauges (in-progress requests, SSE) from the merge."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid or os.getpid())


def start_worker_exporter(port: int, addr: str, running: Callable[[], int], slots: int) -> None:
    """Serve this worker process's registry on `addr:port` (a daemon thread)."""
    from prometheus_client import start_http_server

    WORKER_RUNNING.set_function(lambda: float(running()))
    WORKER_SLOTS.set(slots)
    record_process_start()
    start_http_server(port, addr=addr)
