"""The server's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Requests, errors, latency, rows, the live version and reloads of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelkeep_serve_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "modelkeep_serve_errors", "HTTP requests answered with a 4xx or 5xx", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "modelkeep_serve_request_seconds",
            "Time to answer a request",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.rows = Counter("modelkeep_serve_rows_predicted", "Rows passed to the model", registry=r)
        self.live = Gauge(
            "modelkeep_serve_live_version", "1 for the version being served", ["model", "version"], registry=r
        )
        self.reloads = Counter("modelkeep_serve_reloads", "Times a new version was swapped in", registry=r)
        self.last_reload = Gauge(
            "modelkeep_serve_last_reload_timestamp_seconds", "When the last swap happened (Unix time)", registry=r
        )
        self.behind = Gauge(
            "modelkeep_serve_behind", "1 while the alias points at a version that could not be served", registry=r
        )
        self.reload_failures = Counter(
            "modelkeep_serve_reload_failures", "Attempts to load a new alias target that failed", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
