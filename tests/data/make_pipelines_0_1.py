"""Write ``tests/data/pipelines_0_1/``: pipelines as modelkeep 0.1 saved them (artifacts and sidecars).

modelkeep 0.1 recorded ``get_params(deep=False)``, with each nested estimator as its
repr, so a pipeline's step parameters were not searchable. ``tests/test_pipeline_params.py``
rebuilds an index from these sidecars (``reindex``) and checks that ``backfill_params``
makes them searchable. Only the artifacts and the sidecar files are kept (``registry.db``
is rebuilt by the test, on SQLite and PostgreSQL).

Run with modelkeep 0.1 on the path, never with a newer release, for example::

    git archive <0.1 commit> src | tar -x -C /tmp/mk01
    PYTHONPATH=/tmp/mk01/src python tests/data/make_pipelines_0_1.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / "pipelines_0_1"
#: ``C`` of the logistic regression of versions 1.0.0, 1.0.1, 1.0.2 of ``pipe``.
C_VALUES = (0.1, 0.5, 2.0)


def main() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import modelkeep
    from modelkeep import ModelPersistence

    if modelkeep.__version__ != "0.1.0":
        sys.exit(f"run this with modelkeep 0.1.0 on the path, not {modelkeep.__version__}")
    shutil.rmtree(TARGET, ignore_errors=True)
    X, y = load_iris(return_X_y=True)
    with ModelPersistence(TARGET, compress=False) as p:
        for C in C_VALUES:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300))
            p.save(model.fit(X, y), "pipe", accuracy=C)
        numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
        columns = ColumnTransformer([("num", numeric, [0, 1])])
        p.save(make_pipeline(columns, LogisticRegression(max_iter=300)).fit(X, y), "ct")
        assert p.verify().ok
    (TARGET / "registry.db").unlink()


if __name__ == "__main__":
    main()
