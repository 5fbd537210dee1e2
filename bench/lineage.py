"""Training-data fingerprint speed (modelkeep.lineage.fingerprint), against plain hashing.

    python bench/lineage.py [--mb 256]

Baselines, measured in the same run on the same bytes: ``hashlib.sha256`` and
``hashlib.blake2b`` over one contiguous buffer (the best any fingerprint over
the data can do). Reported: GB/s of each, and the fingerprint's time as a
ratio of raw sha256. Results go to stdout as a Markdown table (copied into
bench/README.md, "Lineage fingerprint").
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from modelkeep.lineage import fingerprint

TIMES = "\u00d7"  # the multiplication sign of the README tables


def _median_seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256, help="size of each workload in MiB")
    args = parser.parse_args()
    rows = args.mb * (1 << 20) // (8 * 16)
    rng = np.random.default_rng(0)
    array = rng.normal(size=(rows, 16))
    frame = pd.DataFrame(array, columns=[f"f{i}" for i in range(16)])
    mixed = frame.iloc[:, :12].assign(
        **{f"n{i}": pd.array(rng.integers(0, 100, rows), dtype="Int64") for i in range(4)}
    )
    nbytes = array.nbytes
    buf = memoryview(array).cast("B")
    sha = _median_seconds(lambda: hashlib.sha256(buf).digest())
    blake = _median_seconds(lambda: hashlib.blake2b(buf).digest())
    cases = {
        "numpy array (float64)": lambda: fingerprint(array),
        "DataFrame, 16 float64 columns": lambda: fingerprint(frame),
        "DataFrame, 12 float64 + 4 nullable Int64": lambda: fingerprint(mixed),
    }
    gbs = nbytes / 1e9
    print(f"{args.mb} MiB per workload; Python {sys.version.split()[0]}, numpy {np.__version__}\n")
    print("| what | time | throughput | vs raw sha256 |")
    print("|---|---|---|---|")
    print(f"| hashlib.sha256, one buffer (baseline) | {sha * 1000:.0f} ms | {gbs / sha:.2f} GB/s | 1.00{TIMES} |")
    blake_row = f"{blake * 1000:.0f} ms | {gbs / blake:.2f} GB/s | {blake / sha:.2f}{TIMES}"
    print(f"| hashlib.blake2b, one buffer | {blake_row} |")
    for name, fn in cases.items():
        t = _median_seconds(fn)
        print(f"| fingerprint: {name} | {t * 1000:.0f} ms | {gbs / t:.2f} GB/s | {t / sha:.2f}{TIMES} |")


if __name__ == "__main__":
    main()
