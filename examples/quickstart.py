"""The main job on the embedded default (SQLite + a local folder).

Trains a small scikit-learn model three times, saves each as a new version
with its metrics, lists and compares the versions, then loads the latest and
checks that it predicts exactly like the model that was saved.

Run: python examples/quickstart.py [models_dir]
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from modelkeep import ModelPersistence


def main(models_dir: str = "quickstart_models") -> None:
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)

    with ModelPersistence(models_dir=models_dir) as registry:
        last = None
        for C in (0.01, 0.1, 1.0):
            model = LogisticRegression(C=C, max_iter=1000).fit(X_train, y_train)
            pred = model.predict(X_test)
            path = registry.save(  # version=None: the next patch version, allocated atomically
                model,
                "iris_classifier",
                accuracy=round(float(accuracy_score(y_test, pred)), 4),
                f1_score=round(float(f1_score(y_test, pred, average="macro")), 4),
                training_samples=len(X_train),
                dataset_version="iris-v1",
            )
            last = model
            print(f"saved {path}")

        print("\nmodels:", registry.list_models())
        print("versions:", registry.list_versions("iris_classifier"))
        print("\ncomparison:")
        table = registry.compare_versions("iris_classifier")
        print(table[["version", "accuracy", "f1_score", "training_samples"]].to_string(index=False))

        loaded, meta = registry.load("iris_classifier", return_metadata=True)  # latest, hash-verified
        assert last is not None and np.array_equal(loaded.predict(X_test), last.predict(X_test))
        print(
            f"\nloaded latest: version {meta.version} ({meta.model_type}, accuracy {meta.metadata['accuracy']}, "
            f"sha256 {meta.artifact.sha256[:12]}...) - predictions identical to the saved model"
        )


if __name__ == "__main__":
    main(*sys.argv[1:2])
