"""What a quarantined load costs: ``load`` with ``quarantine="always"`` against ``"never"`` (same run).

Saves a small model (a LogisticRegression, and a LightGBM booster in its own format) and large
ones (a ~100 MB random forest and a ~100 MB dict of float arrays, joblib uncompressed) once, then
loads each version alternately without and with the quarantine, in this one process (so the
normal load runs with its libraries already imported, as in a long-lived service; the
quarantine's child imports them afresh every time, which is what it costs). Prints the median
of each, the ratio, and the child's own time.

    python bench/quarantine.py [--large-mb 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def _objects(large_mb: int) -> dict[str, tuple[str, Any]]:
    import lightgbm as lgb
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from common import CACHE_DIR
    from workloads import array_dict, cached_forest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 8))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, label=y), num_boost_round=20)
    return {
        "small logistic regression (joblib)": ("joblib", LogisticRegression().fit(X, y)),
        "small LightGBM booster (lightgbm)": ("lightgbm", booster),
        f"{large_mb} MB random forest (joblib)": ("joblib", cached_forest(large_mb, CACHE_DIR)),
        f"{large_mb} MB float arrays (joblib)": ("joblib", array_dict(large_mb)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--large-mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(ROOT / "src"))
    from modelkeep import ModelPersistence, quarantine

    rows = []
    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        for i, (label, (fmt, obj)) in enumerate(_objects(args.large_mb).items()):
            models = f"{tmp}/{i}"
            with ModelPersistence(models, serialization_format=fmt, compress=False) as p:
                p.save(obj, "m", "1.0.0")
                size = p.get_version("m", "1.0.0").artifact.size  # type: ignore[union-attr]
            del obj
            normal, quarantined, child = [], [], []
            with (
                ModelPersistence(models, quarantine="never") as plain,
                ModelPersistence(models, quarantine="always") as guarded,
            ):
                plain.load("m", "1.0.0")  # import the framework once, as a running service has
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    plain.load("m", "1.0.0")
                    normal.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    guarded.load("m", "1.0.0")
                    quarantined.append(time.perf_counter() - t)
                    report = quarantine.check_loadable(guarded, "m", "1.0.0")
                    assert report is not None
                    child.append(report.seconds)
            rows.append(
                (label, size, statistics.median(normal), statistics.median(quarantined), statistics.median(child))
            )
    print("| model | artifact MB | normal load s | quarantined load s | ratio | child alone s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, size, normal_s, quarantined_s, child_s in rows:
        print(
            f"| {label} | {size / 1e6:.1f} | {normal_s:.3f} | {quarantined_s:.3f} | "
            f"{quarantined_s / normal_s:.1f} | {child_s:.3f} |"
        )


if __name__ == "__main__":
    main()
