"""Write ``tests/data/registry_0_1/``: a registry as modelkeep 0.1 wrote it.

Run with modelkeep 0.1 on the path (the code at the commit that introduced
this file's data), never with a newer release, for example::

    git archive <0.1 commit> src | tar -x -C /tmp/mk01
    PYTHONPATH=/tmp/mk01/src python tests/data/make_registry_0_1.py

It holds several models and versions in the joblib (compressed and not),
pickle (plain and gzip) and native formats, one version signed with
:data:`SIGNING_KEY`, and only types that every later release loads without
extra trust settings (scikit-learn estimators, numpy arrays, plain containers).
``tests/test_old_registries.py`` opens a copy of it with the current code.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

#: The HMAC key of the one signed version (``signed`` 1.0.0).
SIGNING_KEY = "modelkeep-0.1-test-data-key"
HERE = Path(__file__).resolve().parent
TARGET = HERE / "registry_0_1"


def main() -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    import modelkeep
    from modelkeep import ModelPersistence

    if modelkeep.__version__ != "0.1.0":
        sys.exit(f"run this with modelkeep 0.1.0 on the path, not {modelkeep.__version__}")
    shutil.rmtree(TARGET, ignore_errors=True)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    clf = LogisticRegression(max_iter=200).fit(X, y)
    reg = LinearRegression().fit(X, X @ np.array([1.0, -2.0, 0.5]))
    table = {"weights": np.arange(5000, dtype=np.float64), "labels": ["a", "b"], "n": 3}  # 40 KB: one blob

    with ModelPersistence(TARGET, compress=False) as p:
        p.save(clf, "churn", accuracy=0.9, dataset="v1")
        p.save_version(clf, "churn", compress=True, metadata={"accuracy": 0.91})
        p.save_version(reg, "churn", "2.0.0-rc1", serialization_format="pickle", metadata={"rmse": 0.1})
        p.save_version(reg, "prices", serialization_format="pickle", compress=True, metadata={"rmse": 0.2})
        p.save_version(table, "prices", "1.1.0", serialization_format="native")
        p.save_version(table, "prices", "1.2.0", serialization_format="native")  # shares its blob
    with ModelPersistence(TARGET, compress=False, signing_key=SIGNING_KEY) as p:
        p.save(clf, "signed", "1.0.0", note="signed with SIGNING_KEY")
    with ModelPersistence(TARGET) as p:
        report = p.verify()
        assert report.ok, report.problems
        summary = {
            name: [
                {"version": r.version, "format": r.artifact.format, "compression": r.artifact.compression}
                for r in p.list_version_records(name)
            ]
            for name in p.list_models()
        }
    (HERE / "registry_0_1.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
