"""Custom pyfunc code shipped with the ``custom`` model of the MLflow fixtures (via ``code_paths``).

modelkeep cannot load this flavor natively: it is imported as the MLflow model folder.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc


class ScaledSum(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Predicts ``factor * row.sum()`` for every input row."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        import numpy as np

        return (np.asarray(model_input, dtype=float).sum(axis=1) * self.factor).tolist()
