"""Storage across a realistic series of versions: a forest retrained with 10 more trees each time.

The baseline is the sum of the plain ``joblib.dump`` sizes of every version
(what a directory of joblib files would hold). For each modelkeep configuration
the whole registry directory is measured (artifacts, sidecars and index). The
native, deduplicating format is tried with ``serialization_format="native"``;
if that raises, it is reported as not available.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from baselines import joblib_save
from common import Settings, error_text, log, scratch_dir, tree_size
from subject import open_registry
from workloads import warm_start_series

NAME = "retrained"
CONFIGS: dict[str, dict[str, Any]] = {
    "joblib, compress=False": {"compress": False},
    "default (compress=True)": {},
    "native, compress=False": {"serialization_format": "native", "compress": False},
    "native (compress=True)": {"serialization_format": "native"},
}


def _joblib_sizes(models: list[Any]) -> list[int]:
    """Size of each version as a plain uncompressed joblib file."""
    sizes = []
    with scratch_dir("dedup-joblib") as root:
        for i, model in enumerate(models):
            path = root / f"v{i}.joblib"
            joblib_save(model, path)
            sizes.append(path.stat().st_size)
    return sizes


def _store_series(modelkeep: Any, options: dict[str, Any], models: list[Any]) -> dict[str, Any]:
    """Save every version into a fresh registry and measure the directory it fills."""
    with scratch_dir("dedup") as root:
        try:
            registry = open_registry(modelkeep, root, **options)
        except Exception as exc:
            return {"error": f"not available: {error_text(exc)}"}
        began = time.perf_counter()
        try:
            for i, model in enumerate(models, start=1):
                registry.save(model, NAME, str(i))
        except Exception as exc:
            return {"error": f"not available: {error_text(exc)}"}
        finally:
            registry.close()
        return {"stored_bytes": tree_size(root), "save_seconds_total": time.perf_counter() - began}


def run(settings: Settings, modelkeep: Any) -> dict[str, Any]:
    """Build the series once, then store it with each modelkeep configuration."""
    log("dedup: training the warm-start series")
    models = [copy.deepcopy(m) for m in warm_start_series(settings.dedup_versions)]
    sizes = _joblib_sizes(models)
    out: dict[str, Any] = {
        "versions": len(models),
        "trees": [m.n_estimators for m in models],
        "joblib_bytes_per_version": sizes,
        "joblib_bytes_total": sum(sizes),
        "configs": {},
    }
    if modelkeep is None:
        return out
    for label, options in CONFIGS.items():
        log(f"dedup: {label}")
        out["configs"][label] = _store_series(modelkeep, options, models)
    return out
