"""Measure the peak memory of one save or load in this (fresh) process; prints JSON.

Run by ``memory.py`` in a subprocess per measurement, for example::

    python bench/memory_probe.py save modelkeep forest DIR --forest-mb 110

The object is built first (and a tiny warm-up save or load runs, so lazy
imports are not counted). Then the kernel's peak-RSS mark is reset through
``/proc/self/clear_refs`` and the operation runs; the result is the peak RSS
during the operation minus the RSS just before it. Where the reset is not
allowed, the ``ru_maxrss`` delta is used instead (an underestimate when the
setup itself peaked higher).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import resource
from pathlib import Path
from typing import Any

from baselines import joblib_read, joblib_save, pickle_read, pickle_save
from common import CACHE_DIR, ensure_modelkeep_importable
from workloads import array_dict, cached_forest, tiny_object

KB = 1024


def _status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * KB
    raise LookupError(field)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _settle() -> None:
    """Free what can be freed before the baseline is read."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Method:
    """Save/load of one object by one method, with a tiny warm-up of the same path."""

    def __init__(self, method: str, root: Path) -> None:
        self.method = method
        self.root = root
        self.registry: Any = None
        if method.startswith("modelkeep"):
            ensure_modelkeep_importable()
            import modelkeep

            fmt = "native" if method == "modelkeep-native" else "joblib"
            self.registry = modelkeep.ModelPersistence(
                models_dir=str(root / "models"), serialization_format=fmt, compress=False
            )

    def save(self, obj: object, name: str) -> None:
        if self.registry is not None:
            self.registry.save(obj, name, "1")
        elif self.method == "joblib":
            joblib_save(obj, self.root / f"{name}.joblib")
        else:
            pickle_save(obj, self.root / f"{name}.pkl")

    def load(self, name: str) -> Any:
        if self.registry is not None:
            return self.registry.load(name, "1")
        if self.method == "joblib":
            return joblib_read(self.root / f"{name}.joblib")
        return pickle_read(self.root / f"{name}.pkl")


def _build(workload: str, args: argparse.Namespace) -> Any:
    """The object to save: the cached forest or a fresh array dict."""
    if workload == "forest":
        return cached_forest(args.forest_mb, CACHE_DIR)
    return array_dict(args.arrays_mb)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the setup, then the measured operation, and report memory figures in bytes."""
    method = _Method(args.method, Path(args.dir))
    if args.case == "save":
        obj = _build(args.workload, args)
        method.save(tiny_object(0), "warmup")
        operation = lambda: method.save(obj, args.workload)  # noqa: E731
    else:
        method.load("warmup")
        if args.workload == "forest":
            import sklearn.ensemble  # noqa: F401 - import cost is not load cost
        operation = lambda: method.load(args.workload)  # noqa: E731
    _settle()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KB
    reset = _reset_peak()
    rss_before = _status_kb("VmRSS")
    result = operation()
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KB
    del result
    return {
        "rss_before": rss_before,
        "peak": peak,
        "delta": peak - (rss_before if reset else maxrss_before),
        "source": "VmHWM reset via clear_refs" if reset else "ru_maxrss delta",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["save", "load"])
    parser.add_argument("method", choices=["modelkeep", "modelkeep-native", "joblib", "pickle"])
    parser.add_argument("workload", choices=["forest", "arrays"])
    parser.add_argument("dir")
    parser.add_argument("--forest-mb", type=int, default=110)
    parser.add_argument("--arrays-mb", type=int, default=200)
    print(json.dumps(measure(parser.parse_args())))


if __name__ == "__main__":
    main()
