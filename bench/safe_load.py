"""Load time under the allow-list unpickler, as a ratio against the code before it (same run).

Saves a large random forest and a dict of float arrays once, in the joblib
(uncompressed and zstd), pickle and native formats, then loads each version
alternately with the baseline code (``--baseline-src``, default: the source
tree of ``main`` exported by ``git archive``) and with this checkout, each in
its own child process so that neither inherits the other's imports. Each side saves
its own copy of the same objects, since an older release refuses a newer index schema. Prints
the median load time of each and the ratio ``after / before``.

    python bench/safe_load.py [--forest-mb 75] [--arrays-mb 100] [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CASES = [("joblib", False), ("joblib", True), ("pickle", False), ("native", False)]

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from modelkeep import ModelPersistence
root, repeats = sys.argv[2], int(sys.argv[3])
out = {}
for case in json.loads(sys.argv[4]):
    with ModelPersistence(f"{root}/{case}") as p:
        for name in ("forest", "arrays"):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                p.load(name, "1.0.0")
                times.append(time.perf_counter() - t)
            out[f"{case}/{name}"] = min(times)
print(json.dumps(out))
"""

#: Saves the objects with one side's code, so each side loads a registry its own release wrote
#: (a newer release's index schema is refused by an older one, by design).
_SAVE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import joblib
from modelkeep import ModelPersistence
root, objects = sys.argv[2], joblib.load(sys.argv[3])
for case, fmt, compress in json.loads(sys.argv[4]):
    with ModelPersistence(f"{root}/{case}", serialization_format=fmt, compress=compress) as p:
        for name, obj in objects.items():
            p.save(obj, name, "1.0.0")
"""


def _export_baseline(target: Path) -> Path:
    base = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True, check=True)
    archive = subprocess.run(["git", "archive", base.stdout.strip(), "src"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forest-mb", type=int, default=75)
    parser.add_argument("--arrays-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(BENCH))
    from common import CACHE_DIR
    from workloads import array_dict, cached_forest

    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        baseline = args.baseline_src or _export_baseline(Path(tmp))
        objects = {"forest": cached_forest(args.forest_mb, CACHE_DIR), "arrays": array_dict(args.arrays_mb)}
        import joblib

        joblib.dump(objects, f"{tmp}/objects.joblib")
        del objects
        cases = [(f"{fmt}-{'z' if compress else 'raw'}", fmt, compress) for fmt, compress in CASES]
        names = [case for case, _fmt, _compress in cases]
        sides = {"before": str(baseline), "after": str(ROOT / "src")}
        env = {**os.environ, "PYTHONPATH": ""}
        for label, src in sides.items():
            subprocess.run(
                [sys.executable, "-c", _SAVE, src, f"{tmp}/{label}", f"{tmp}/objects.joblib", json.dumps(cases)],
                check=True,
                env=env,
            )
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for label, src in sides.items():
                done = subprocess.run(
                    [sys.executable, "-c", _CHILD, src, f"{tmp}/{label}", str(args.repeats), json.dumps(names)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{'case':24} {'before s':>9} {'after s':>9} {'ratio':>6}")
        for key in runs["before"][0]:
            before = statistics.median(r[key] for r in runs["before"])
            after = statistics.median(r[key] for r in runs["after"])
            print(f"{key:24} {before:9.3f} {after:9.3f} {after / before:6.2f}")


if __name__ == "__main__":
    main()
