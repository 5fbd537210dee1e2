"""Models from the frameworks people use, and how to get predictions out of each.

Imported by tests/test_frameworks.py (which trains and saves) and run as a script
in a fresh process (which loads and predicts): ``python -m tests._framework_models
<models_dir> <cases.json>`` prints a JSON list of failures.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on torch: there is no tensorflow here
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers models are built from configs, never downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Trust these when loading skops artifacts (the scikit-learn cases only use skops' defaults).
TRUSTED: list[str] = []


def data() -> tuple[Any, np.ndarray]:
    """A small binary classification problem as a DataFrame with named columns."""
    import pandas as pd

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] + X[:, 1] * 0.5 - X[:, 2] > 0).astype(int)
    return pd.DataFrame(X, columns=["age", "income", "tenure", "score"]), y


def _sklearn() -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data()
    return {"sklearn_pipeline": Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(X, y)}


def _xgboost() -> dict[str, Any]:
    import xgboost as xgb

    X, y = data()
    booster = xgb.train({"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(X, label=y), num_boost_round=5)
    return {
        "xgb_classifier": xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y),
        "xgb_regressor": xgb.XGBRegressor(n_estimators=5, max_depth=2).fit(X, y.astype(float)),
        "xgb_booster": booster,
    }


def _lightgbm() -> dict[str, Any]:
    import lightgbm as lgb

    X, y = data()
    params = {"objective": "binary", "num_leaves": 4, "verbose": -1, "min_data_in_leaf": 5}
    return {
        "lgb_booster": lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=5),
        "lgb_classifier": lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(X, y),
    }


def _catboost() -> dict[str, Any]:
    import catboost

    X, y = data()
    kwargs = {"iterations": 5, "depth": 2, "verbose": False, "allow_writing_files": False, "thread_count": 1}
    return {
        "catboost_classifier": catboost.CatBoostClassifier(**kwargs).fit(X, y),
        "catboost_regressor": catboost.CatBoostRegressor(**kwargs).fit(X, y.astype(float)),
    }


def _statsmodels() -> dict[str, Any]:
    import statsmodels.api as sm
    from statsmodels.tsa.arima.model import ARIMA

    X, y = data()
    series = np.cumsum(np.random.default_rng(1).normal(size=80))
    return {
        "sm_ols": sm.OLS(y.astype(float), sm.add_constant(X.to_numpy())).fit(),
        "sm_arima": ARIMA(series, order=(1, 1, 1)).fit(),
    }


def _torch() -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    return {"torch_module": module, "torch_state_dict": module.state_dict()}


def _transformers() -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    return {"transformers_bert": BertForSequenceClassification(config).eval()}


def _keras() -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return {"keras_sequential": model}


def _pandas() -> dict[str, Any]:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "a": pd.array([1, None, 3], dtype="Int64"),
            "b": pd.array([True, None, False], dtype="boolean"),
            "c": pd.array(["x", None, "z"], dtype="string"),
            "d": pd.Categorical(["u", "v", "u"]),
            "e": pd.date_range("2024-01-01", periods=3, tz="UTC"),
            "f": np.linspace(0, 1, 3),
        }
    )
    return {"pandas_frame": frame, "pandas_series": pd.Series(np.arange(5.0), name="s")}


#: framework -> builder of {case: fitted model}
BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "sklearn": _sklearn,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
    "catboost": _catboost,
    "statsmodels": _statsmodels,
    "torch": _torch,
    "transformers": _transformers,
    "keras": _keras,
    "pandas": _pandas,
}


def predict(case: str, model: Any) -> list[np.ndarray]:
    """Everything worth comparing after a round trip, as numpy arrays."""
    X, _ = data()
    if case.startswith("pandas_"):
        dtypes = list(model.dtypes) if hasattr(model, "columns") else [model.dtype]
        return [model.astype(str).to_numpy().astype(str), np.asarray([str(t) for t in dtypes])]
    if case.startswith("torch_state_dict"):
        return [model[k].numpy() for k in sorted(model)]
    if case.startswith("torch_") or case.startswith("transformers_"):
        import torch

        with torch.no_grad():
            if case.startswith("transformers_"):
                ids = torch.tensor([[1, 5, 7, 2], [3, 4, 9, 0]])
                return [model(input_ids=ids).logits.numpy()]
            return [model(torch.tensor(X.to_numpy(), dtype=torch.float32)).numpy()]
    if case.startswith("keras_"):
        return [np.asarray(model.predict(X.to_numpy(), verbose=0))]
    if case == "xgb_booster":
        import xgboost as xgb

        return [model.predict(xgb.DMatrix(X))]
    if case == "lgb_booster":
        return [model.predict(X)]
    if case == "sm_arima":
        return [np.asarray(model.forecast(5)), np.asarray(model.params)]
    if case == "sm_ols":
        import statsmodels.api as sm

        return [np.asarray(model.predict(sm.add_constant(X.to_numpy()))), np.asarray(model.params)]
    outs = [np.asarray(model.predict(X))]
    if hasattr(model, "predict_proba"):
        outs.append(np.asarray(model.predict_proba(X)))
    return outs


def check(models_dir: str, cases: list[dict[str, Any]]) -> list[str]:
    """Load every case in this (fresh) process and compare with the recorded predictions."""
    from modelkeep import ModelPersistence

    failures: list[str] = []
    with ModelPersistence(models_dir=models_dir, trusted_types=TRUSTED, create=False) as p:
        for c in cases:
            try:
                model = p.load(c["name"], mmap_mode=c.get("mmap_mode"))
                got = predict(c["case"], model)
                want = np.load(c["expected"], allow_pickle=False)
                if len(got) != len(want.files):
                    failures.append(f"{c['name']}: {len(got)} outputs, expected {len(want.files)}")
                    continue
                for i, arr in enumerate(got):
                    np.testing.assert_array_equal(arr, want[f"arr_{i}"], err_msg=c["name"])
            except Exception:
                failures.append(f"{c['name']}: {traceback.format_exc(limit=3)}")
    return failures


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        todo = json.load(f)
    print(json.dumps(check(sys.argv[1], todo)))
