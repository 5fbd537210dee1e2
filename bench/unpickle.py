"""Unpickling object-heavy pickles: modelkeep's ``pickle`` and ``native`` loads against ``pickle.loads``.

Each workload is pickled once (protocol 5); every round then loads the same bytes with
``pickle.loads`` (the baseline), with the format's ``load`` (what a registry load runs after
the integrity check: the fast path of formats/_fastpath.py when the stream is proven plain,
else the restricted unpickler), with the restricted unpickler alone (the path before the fast
path), and runs the fast path's pre-scan alone (its floor: the fast path costs at least the
scan plus the C unpickler). The pre-scan is the compiled one (formats/_plainscan.c) when it was
built: then the format load and the scan are also timed with the pure-Python scan (the fallback
of an install without a compiler), interleaved, for the A/B. Rounds interleave the sides;
medians are reported::

    PYTHONPATH=src python bench/unpickle.py [--rounds 5] [--quick]

:func:`run` returns ``{"scanner": "c" | "python", "rows": [...]}``, one row per (workload,
format) with the medians in seconds and ``ratio`` (format load / ``pickle.loads``), which
bench/targets.py checks against the issue's 1.5x; with the C scanner, ``python_scan_ratio`` and
``python_floor_ratio`` are the same figures with the Python scan.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import mmap
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

#: Issue 29: object-heavy pickles load within this factor of ``pickle.loads``.
TARGET_RATIO = 1.5


def workloads(quick: bool) -> dict[str, Any]:
    """Object-heavy values (plain data) and a forest (which the restricted unpickler keeps)."""
    n = 30_000 if quick else 300_000
    out: dict[str, Any] = {
        f"dict of {n:,} tuples": {f"key{i}": (i, i * 0.5, f"v{i}") for i in range(n)},
        f"dict of {n:,} small dicts": {i: {"a": i, "b": float(i), "c": [i, str(i)]} for i in range(n)},
        f"list of {n * 10 // 3:,} floats": [i / 7 for i in range(n * 10 // 3)],
        f"list of {n * 10 // 3:,} ints": list(range(-n, n * 10 // 3 - n)),
        f"list of {n * 10 // 3:,} strings": [f"s{i}" for i in range(n * 10 // 3)],
    }
    try:
        from sklearn.datasets import make_regression
        from sklearn.ensemble import RandomForestRegressor

        x, y = make_regression(n_samples=2_000, n_features=10, random_state=0)
        out["forest (100 trees)"] = RandomForestRegressor(n_estimators=10 if quick else 100, random_state=0).fit(x, y)
    except ImportError:
        pass
    return out


def _mapped(data: bytes) -> mmap.mmap:
    """The stream in a private anonymous map: what a verified registry load hands a format."""
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


def _time(fn: Callable[[], Any]) -> float:
    gc.collect()
    began = time.perf_counter()
    result = fn()
    took = time.perf_counter() - began
    del result
    return took


def _sides(obj: Any, fmt: str, blob_dir: str) -> dict[str, Callable[[], Any]]:
    """Loaders of the same object: baseline, format load, restricted unpickler, scan."""
    from modelkeep.blobs import BlobStore
    from modelkeep.formats import _fastpath
    from modelkeep.formats._fastpath import prove_plain, prove_plain_python
    from modelkeep.formats._restricted import RestrictedUnpickler, TrustPolicy
    from modelkeep.formats.budget import LoadBudget
    from modelkeep.formats.native import NativeFormat
    from modelkeep.formats.pickle_format import PickleFormat
    from modelkeep.formats.state_checks import checked
    from modelkeep.storage.local import LocalStore

    if fmt == "pickle":
        out = io.BytesIO()
        PickleFormat().dump(obj, out, None)
        data, buffers, options = out.getvalue(), [], {}
        form: Any = PickleFormat()
    else:
        blobs = BlobStore(LocalStore(blob_dir))
        out = io.BytesIO()
        extra = NativeFormat().dump(obj, out, None, blobs=blobs) or {}
        data = out.getvalue()
        digests = [(sha, int(size)) for sha, size in extra.get("blobs", [])]
        buffers = blobs.read_many(digests, verify=True, mmap=False)
        options = {"blobs": blobs, "extra": extra}
        form = NativeFormat()
    mapped = _mapped(data)

    def format_load() -> Any:
        mapped.seek(0)
        return form.load(mapped, None, **options)

    def restricted() -> Any:
        unpickler = RestrictedUnpickler(
            io.BytesIO(data), buffers=buffers, policy=TrustPolicy(), budget=LoadBudget.for_artifact(len(data))
        )
        return checked(unpickler.load())

    def with_python_scan() -> Any:
        compiled, _fastpath._c_walk = _fastpath._c_walk, None
        try:
            return format_load()
        finally:
            _fastpath._c_walk = compiled

    sides = {
        "pickle.loads": lambda: pickle.loads(data, buffers=buffers),
        "format load": format_load,
        "restricted unpickler": restricted,
        "pre-scan": lambda: prove_plain(data),
    }
    if _fastpath.SCANNER == "c":
        sides["format load, python scan"] = with_python_scan
        sides["python pre-scan"] = lambda: prove_plain_python(data)
    return sides


def run(rounds: int = 5, quick: bool = False) -> dict[str, Any]:
    """Medians per (workload, format); ``ratio`` is format load over ``pickle.loads``."""
    from modelkeep.formats._fastpath import SCANNER

    rows = []
    with tempfile.TemporaryDirectory(prefix="mk-unpickle-") as blob_dir:
        for label, obj in workloads(quick).items():
            for fmt in ("pickle", "native"):
                sides = _sides(obj, fmt, f"{blob_dir}/{fmt}-{len(rows)}")
                times: dict[str, list[float]] = {name: [] for name in sides}
                for _ in range(rounds):
                    for name, fn in sides.items():
                        times[name].append(_time(fn))
                med = {name: statistics.median(ts) for name, ts in times.items()}
                base = med["pickle.loads"]
                row = {
                    "workload": label,
                    "format": fmt,
                    "scanner": SCANNER,
                    "fast_path": bool(sides["pre-scan"]()),
                    **{f"{name}_s": round(value, 5) for name, value in med.items()},
                    "ratio": round(med["format load"] / base, 3),
                    "restricted_ratio": round(med["restricted unpickler"] / base, 3),
                    "floor_ratio": round((med["pre-scan"] + base) / base, 3),
                    "target": TARGET_RATIO,
                }
                if "python pre-scan" in med:
                    row["python_scan_ratio"] = round(med["format load, python scan"] / base, 3)
                    row["python_floor_ratio"] = round((med["python pre-scan"] + base) / base, 3)
                rows.append(row)
    return {"scanner": SCANNER, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    result = run(args.rounds, args.quick)
    ab = result["scanner"] == "c"
    print(f"pre-scan: {'C extension (formats/_plainscan.c)' if ab else 'pure Python (the extension is not built)'}")
    extra = " python scan | python scan floor |" if ab else ""
    print(f"| workload | format | fast path | pickle.loads | format load | ratio | restricted | scan floor |{extra}")
    print("|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if ab else ""))
    for row in result["rows"]:
        tail = f" {row['python_scan_ratio']:.2f}x | {row['python_floor_ratio']:.2f}x |" if ab else ""
        print(
            f"| {row['workload']} | {row['format']} | {'yes' if row['fast_path'] else 'no'} "
            f"| {row['pickle.loads_s'] * 1e3:.0f} ms | {row['format load_s'] * 1e3:.0f} ms | {row['ratio']:.2f}x "
            f"| {row['restricted_ratio']:.2f}x | {row['floor_ratio']:.2f}x |{tail}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
