"""The pickle-free framework formats: they never unpickle, they only rebuild the classes
on their list, ``auto`` picks them, and Keras gets a safe load path (``safe_mode=True``)."""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

from modelkeep import (
    ConfigError,
    EnvironmentMismatchWarning,
    ModelPersistence,
    SerializationError,
    UnsafeModelError,
)
from modelkeep.formats import get_format
from tests import _framework_models as fm

PICKLE_FREE = ["xgboost", "lightgbm", "catboost", "torch", "keras"]


@pytest.fixture
def p(tmp_path: Path) -> Iterator[ModelPersistence]:
    with ModelPersistence(models_dir=tmp_path / "models", serialization_format="auto") as persistence:
        yield persistence


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for framework in ("xgboost", "lightgbm", "catboost", "torch", "keras"):
        out.update(fm.BUILDERS[framework]())
    return out


CASE_FORMAT = {
    "xgb_booster": "xgboost",
    "xgb_classifier": "xgboost",
    "lgb_booster": "lightgbm",
    "catboost_classifier": "catboost",
    "torch_state_dict": "torch",
    "keras_sequential": "keras",
}


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling during the block fails the test: pickle-free means no pickle at all."""

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a pickle-free format unpickled something")

    class Refusing(pickle.Unpickler):
        def __init__(self, *_a: Any, **_k: Any) -> None:
            refuse()

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refusing)


@pytest.mark.parametrize("case", list(CASE_FORMAT))
def test_auto_stores_the_frameworks_own_format_and_loads_without_pickle(
    p: ModelPersistence, models: dict[str, Any], case: str, request: pytest.FixtureRequest
) -> None:
    model = models[case]
    rec = p.save_version(model, case)
    fmt = CASE_FORMAT[case]
    assert rec.artifact is not None and rec.artifact.format == fmt
    assert rec.artifact.key.endswith(get_format(fmt).extension(None))
    assert "globals" not in rec.artifact.extra  # nothing for an unpickler to resolve
    request.getfixturevalue("no_unpickling")
    loaded = p.load(case)
    assert type(loaded) is type(model)
    for got, want in zip(fm.predict(case, loaded), fm.predict(case, model), strict=True):
        np.testing.assert_array_equal(got, want)


def test_auto_falls_back_to_joblib_for_everything_else(p: ModelPersistence, models: dict[str, Any]) -> None:
    assert p.save_version({"a": 1}, "d").artifact.format == "joblib"  # type: ignore[union-attr]
    assert p.save_version(models["torch_module"], "mod").artifact.format == "joblib"  # type: ignore[union-attr]
    assert p.save_version(models["lgb_classifier"], "lgbc").artifact.format == "joblib"  # type: ignore[union-attr]
    assert p.save_version({}, "empty").artifact.format == "joblib"  # type: ignore[union-attr]


@pytest.mark.parametrize("fmt", PICKLE_FREE)
def test_a_format_refuses_objects_it_cannot_store(tmp_path: Path, fmt: str) -> None:
    with ModelPersistence(models_dir=tmp_path / "m", serialization_format=fmt) as p:
        with pytest.raises(SerializationError, match=f"the {fmt} format cannot store"):
            p.save({"not": "a model"}, "m")
        assert p.list_versions("m") == []


@pytest.mark.parametrize("fmt", PICKLE_FREE)
def test_explicit_codecs_are_refused(fmt: str) -> None:
    assert get_format(fmt).normalize_compression(True) is None
    with pytest.raises(ConfigError, match="as is"):
        get_format(fmt).normalize_compression("zlib:3")


def test_a_rewritten_class_name_is_refused(p: ModelPersistence, models: dict[str, Any]) -> None:
    """An attacker who rewrites the recorded class (and the digests) cannot name other code."""
    fmt = get_format("xgboost")
    with pytest.raises(UnsafeModelError, match="os:system"):
        fmt.load(open(os.devnull, "rb"), None, extra={"class": "os:system"})  # noqa: SIM115
    with pytest.raises(UnsafeModelError):
        get_format("torch").load(open(os.devnull, "rb"), None, extra={})  # noqa: SIM115


def test_keras_lambda_layers_are_refused_by_safe_mode(p: ModelPersistence) -> None:
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Lambda(lambda x: x * 2)])
    p.save(model, "lam")
    with pytest.raises(SerializationError, match=r"(?i)lambda|safe_mode"):
        p.load("lam")


def test_keras_model_loads_the_safe_way(p: ModelPersistence, models: dict[str, Any]) -> None:
    """Keras used to save in every format and load in none (refused on builtins.getattr)."""
    rec = p.save_version(models["keras_sequential"], "k")
    assert rec.artifact is not None and rec.artifact.format == "keras"
    assert "keras" in rec.environment["packages"] and "torch" not in rec.artifact.extra


def test_environment_records_the_frameworks_the_artifact_names(p: ModelPersistence, models: dict[str, Any]) -> None:
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    holder = LinearRegression().fit(np.ones((3, 1)), [1.0, 2.0, 3.0])
    holder.reference_frame_ = pd.DataFrame({"a": [1]})  # a DataFrame inside a scikit-learn model
    saved = p.save_version(holder, "holder", serialization_format="joblib")
    assert {"pandas", "scikit-learn", "numpy"} <= set(saved.environment["packages"])
    sd = p.save_version(models["torch_state_dict"], "sd")
    assert {"torch", "safetensors"} <= set(sd.environment["packages"])
    pickled_sd = p.save_version(models["torch_state_dict"], "sd-joblib", serialization_format="joblib")
    assert "torch" in pickled_sd.environment["packages"]
    assert "xgboost" in p.save_version(models["xgb_booster"], "x").environment["packages"]


def test_environment_differences_are_one_structured_warning(p: ModelPersistence) -> None:
    import platform

    p.save({"a": 1}, "m")
    rec = p.get_version("m")
    assert not rec.environment_diff()  # same process, nothing differs
    rec.environment["packages"]["numpy"] = "1.0.0"
    rec.environment["python"] = "2.7.18"
    rec.environment["packages"]["no-such-package"] = "0.1"
    p.index.put(rec)  # as if saved elsewhere
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p.load("m")
    mine = [w.message for w in caught if isinstance(w.message, EnvironmentMismatchWarning)]
    assert len(mine) == 1
    diff = mine[0].diff
    found = diff.to_dict()
    assert found["python"] == {"saved": "2.7.18", "running": platform.python_version(), "level": "major"}
    assert found["numpy"]["saved"] == "1.0.0" and found["numpy"]["level"] == "major"
    assert found["no-such-package"] == {"saved": "0.1", "running": None, "level": "major"}
    assert p.get_version("m").environment_diff().to_dict() == found


@pytest.mark.parametrize("fmt", ["joblib", "pickle", "native"])
def test_keras_with_a_pickle_format_is_refused_before_writing(tmp_path: Path, models: dict[str, Any], fmt: str) -> None:
    with ModelPersistence(models_dir=tmp_path / "m", serialization_format=fmt) as p:
        with pytest.raises(SerializationError, match="serialization_format='keras' or 'auto'"):
            p.save(models["keras_sequential"], "k")
        assert not (tmp_path / "m" / "registry.db").exists()  # refused before anything was written
