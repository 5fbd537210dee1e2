"""The server's Prometheus metrics, in a registry of its own (one per app).

With ``--workers N`` every worker writes its values to memory-mapped files in one private
folder (prometheus_client's multiprocess mode: the parent creates the folder, sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start and removes it on exit), and
:meth:`Metrics.render` reads them all, so ``/metrics`` reports the whole server whichever
worker answers: requests, errors, latency and rows are summed; the live version and
``behind`` are those of the living workers; reloads and the last reload time are the
highest any worker reached (one alias move counts one reload, not one per worker).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Environment variable prometheus_client reads (at import) to write values to shared files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Requests, errors, latency, rows, the live version and reloads of one app (or of all a server's workers)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            forget_dead_workers(multiprocess_dir)
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
            "modelkeep_serve_live_version",
            "1 for the version being served",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Gauge(
            "modelkeep_serve_reloads_total",  # a gauge: with workers, the most any of them did
            "Times a new version was swapped in",
            registry=r,
            multiprocess_mode="max",
        )
        self.last_reload = Gauge(
            "modelkeep_serve_last_reload_timestamp_seconds",
            "When the last swap happened (Unix time)",
            registry=r,
            multiprocess_mode="max",
        )
        self.behind = Gauge(
            "modelkeep_serve_behind",
            "1 while the alias points at a version that could not be served",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reload_failures = Counter(
            "modelkeep_serve_reload_failures", "Attempts to load a new alias target that failed", registry=r
        )

    def serving(self, model: str, version: str, old: str | None) -> None:
        """``version`` is live (instead of ``old``)."""
        if old is not None and old != version:
            self.live.labels(model, old).set(0)  # shared files keep a label once written: 0 hides it
        self.live.labels(model, version).set(1)

    def render(self) -> bytes:
        """The metrics page (every worker's values combined, in multiprocess mode)."""
        if self.multiprocess_dir is None:
            return generate_latest(_Shown(self.registry))
        from prometheus_client.multiprocess import MultiProcessCollector

        combined = CollectorRegistry()
        MultiProcessCollector(combined, self.multiprocess_dir)
        return generate_latest(_Shown(combined))

    def close(self) -> None:
        """This worker stops: its live gauges no longer count."""
        if self.multiprocess_dir is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), self.multiprocess_dir)


class _Shown:
    """A registry's metrics without the versions no longer live (value 0)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if metric.name == "modelkeep_serve_live_version":
                metric.samples = [s for s in metric.samples if s.value]
            yield metric


_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def forget_dead_workers(path: str) -> None:
    """Drop the live gauges of workers that died without saying so (uvicorn restarts a killed worker)."""
    from prometheus_client.multiprocess import mark_process_dead

    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)
        except PermissionError:
            pass  # alive, someone else's
