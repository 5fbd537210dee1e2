"""Objects the benchmarks save and load.

Only numpy, scikit-learn and joblib are used here, so the MLflow worker can
import this module from its own virtual environment and build the same models.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np

#: Measured size of one fully grown regression tree node, per training sample.
_BYTES_PER_SAMPLE_PER_TREE = 91
FOREST_TREES = 100
MB = 1024 * 1024


class _ByteCounter:
    """A write-only file object that only counts what is written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n


def pickled_size(obj: object) -> int:
    """Size in bytes of ``obj`` pickled with protocol 5, computed without keeping the bytes."""
    counter = _ByteCounter()
    pickle.dump(obj, counter, protocol=5)
    return counter.size


def small_model() -> Any:
    """A fitted LogisticRegression on 500 x 20 synthetic rows (a few KB pickled)."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=500, n_features=20, random_state=0)
    return LogisticRegression(max_iter=500).fit(x, y)


def forest_samples(target_mb: int, n_trees: int = FOREST_TREES) -> int:
    """Training rows needed for a fully grown forest of ``n_trees`` to pickle to ``target_mb``."""
    return math.ceil(target_mb * MB / (n_trees * _BYTES_PER_SAMPLE_PER_TREE))


def build_forest(target_mb: int, n_trees: int = FOREST_TREES) -> Any:
    """Fit a RandomForestRegressor whose pickle is roughly ``target_mb`` megabytes."""
    from sklearn.datasets import make_regression
    from sklearn.ensemble import RandomForestRegressor

    x, y = make_regression(n_samples=forest_samples(target_mb, n_trees), n_features=20, noise=1.0, random_state=0)
    return RandomForestRegressor(n_estimators=n_trees, n_jobs=2, random_state=0).fit(x, y)


def cached_forest(target_mb: int, cache_dir: Path) -> Any:
    """The forest of :func:`build_forest`, built once and then reloaded from a joblib cache."""
    import sklearn

    path = cache_dir / f"forest-{target_mb}mb-sklearn{sklearn.__version__}.joblib"
    if path.exists():
        return joblib.load(path)
    model = build_forest(target_mb)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".incomplete")
    joblib.dump(model, partial)
    partial.replace(path)
    return model


def array_dict(total_mb: int, n_arrays: int = 8) -> dict[str, np.ndarray]:
    """``n_arrays`` float64 arrays of random normals adding up to ``total_mb`` megabytes."""
    rng = np.random.default_rng(0)
    per_array = total_mb * MB // 8 // n_arrays
    return {f"layer{i}": rng.standard_normal(per_array) for i in range(n_arrays)}


def tiny_object(i: int) -> dict[str, Any]:
    """A few-hundred-byte object, so index costs dominate the save in the scaling test."""
    return {"step": i, "weights": [float(i)] * 16}


def warm_start_series(n_versions: int, trees_per_step: int = 10, n_samples: int = 4000) -> Iterator[Any]:
    """The same RandomForestRegressor retrained with ``trees_per_step`` more trees each version.

    With ``warm_start=True`` the earlier trees are kept unchanged, which is the
    realistic case where consecutive versions share most of their bytes.
    """
    from sklearn.datasets import make_regression
    from sklearn.ensemble import RandomForestRegressor

    x, y = make_regression(n_samples=n_samples, n_features=20, noise=1.0, random_state=1)
    model = RandomForestRegressor(n_estimators=0, warm_start=True, n_jobs=2, random_state=0)
    for step in range(1, n_versions + 1):
        model.set_params(n_estimators=step * trees_per_step)
        model.fit(x, y)
        yield model
