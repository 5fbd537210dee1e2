"""Every "Programmatic Usage" example of the seed README, run as written.

The only change to each block is its import: ``from src.main import`` became
``from modelkeep import``. Blocks that build on earlier ones (the seed reuses
``model`` and ``persistence``) run their predecessors first. Each test runs in
a fresh working folder, since the examples use relative paths ("models",
"config.yaml").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep.config import ENV_VARS

from .conftest import SEED_CONFIG


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    logger = logging.getLogger("modelkeep")
    level, handlers = logger.level, list(logger.handlers)
    yield tmp_path
    for handler in logger.handlers[:]:  # the config example adds a log file handler
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)


# --------------------------------------------------------------------------------------
# The seed's blocks, verbatim except for the import line
# --------------------------------------------------------------------------------------


def basic_save_and_load() -> dict[str, Any]:
    # ---- seed: "Basic Save and Load" ----
    from sklearn.linear_model import LinearRegression

    from modelkeep import ModelPersistence

    # Create and train a model
    model = LinearRegression()
    X = np.random.randn(100, 5)
    y = np.random.randn(100)
    model.fit(X, y)

    # Initialize persistence manager
    persistence = ModelPersistence(models_dir="models")

    # Save model with metadata
    model_path = persistence.save(
        model,
        model_name="regression_model",
        version="1.0.0",
        accuracy=0.95,
        training_samples=100,
        features=["feature1", "feature2", "feature3"],
    )

    # Load model
    loaded_model = persistence.load("regression_model", "1.0.0")
    # ---- end of seed block ----
    return {"model": model, "X": X, "persistence": persistence, "model_path": model_path, "loaded": loaded_model}


def save_with_custom_metadata(persistence: Any, model: Any) -> None:
    # ---- seed: "Save with Custom Metadata" ----
    persistence.save(
        model,
        model_name="my_model",
        version="1.0.0",
        accuracy=0.95,
        f1_score=0.92,
        precision=0.94,
        recall=0.91,
        training_date="2024-01-01",
        dataset_version="v2.1",
        hyperparameters={"n_estimators": 100, "max_depth": 10},
    )


def load_with_metadata(persistence: Any) -> tuple[Any, Any]:
    # ---- seed: "Load with Metadata" ----
    model, metadata = persistence.load("my_model", version="1.0.0", return_metadata=True)

    print(f"Model: {metadata.model_name}")
    print(f"Version: {metadata.version}")
    print(f"Accuracy: {metadata.metadata['accuracy']}")
    print(f"Created: {metadata.created_at}")
    return model, metadata


def load_latest_version(persistence: Any) -> Any:
    # ---- seed: "Load Latest Version" ----
    # Automatically loads the latest version
    model = persistence.load("my_model")
    return model


def list_models_and_versions(persistence: Any) -> tuple[Any, Any]:
    # ---- seed: "List Models and Versions" ----
    # List all models
    models = persistence.list_models()
    print(f"Registered models: {models}")

    # List versions for a model
    versions = persistence.list_versions("my_model")
    print(f"Versions: {versions}")
    return models, versions


def get_metadata(persistence: Any) -> Any:
    # ---- seed: "Get Metadata" ----
    metadata = persistence.get_metadata("my_model", "1.0.0")
    if metadata:
        print(f"Model type: {metadata.model_type}")
        print(f"Model parameters: {metadata.metadata.get('model_params')}")
    return metadata


def compare_versions(persistence: Any) -> Any:
    # ---- seed: "Compare Versions" ----
    comparison = persistence.compare_versions("my_model")
    print(comparison[["version", "accuracy", "f1_score", "created_at"]])
    return comparison


def using_manager_with_config(model: Any) -> dict[str, Any]:
    # ---- seed: "Using ModelPersistenceManager (with config)" ----
    from pathlib import Path

    from modelkeep import ModelPersistenceManager

    manager = ModelPersistenceManager(config_path=Path("config.yaml"))

    # Save model
    model_path = manager.save_model(model, "my_model", "1.0.0", accuracy=0.95)

    # Load model
    loaded_model = manager.load_model("my_model", "1.0.0")

    # Get metadata
    metadata = manager.get_model_metadata("my_model", "1.0.0")
    # ---- end of seed block ----
    return {"manager": manager, "model_path": model_path, "loaded": loaded_model, "metadata": metadata}


def different_serialization_formats() -> tuple[Any, Any]:
    from modelkeep import ModelPersistence  # the seed's first block imported it

    # ---- seed: "Different Serialization Formats" ----
    # Use pickle format
    persistence_pickle = ModelPersistence(models_dir="models", serialization_format="pickle", compress=True)

    # Use joblib format (default, better for scikit-learn)
    persistence_joblib = ModelPersistence(models_dir="models", serialization_format="joblib", compress=True)
    # ---- end of seed block ----
    return persistence_pickle, persistence_joblib


# --------------------------------------------------------------------------------------
# The tests: run the blocks in the seed's order and check what they produced
# --------------------------------------------------------------------------------------


@pytest.fixture
def basic() -> Iterator[dict[str, Any]]:
    state = basic_save_and_load()
    yield state
    state["persistence"].close()


@pytest.fixture
def with_my_model(basic: dict[str, Any]) -> dict[str, Any]:
    save_with_custom_metadata(basic["persistence"], basic["model"])
    return basic


def test_basic_save_and_load(basic: dict[str, Any], workdir: Path) -> None:
    path = basic["model_path"]
    assert path == workdir / "models" / "regression_model" / "1.0.0" / "regression_model_v1.0.0.joblib"
    assert path.is_file()
    assert (path.parent / "regression_model_v1.0.0_metadata.json").is_file()
    np.testing.assert_array_equal(basic["loaded"].predict(basic["X"]), basic["model"].predict(basic["X"]))
    meta = basic["persistence"].get_metadata("regression_model", "1.0.0")
    assert meta.metadata["features"] == ["feature1", "feature2", "feature3"]
    assert meta.metadata["training_samples"] == 100
    assert meta.metadata["model_params"]["fit_intercept"] is True


def test_save_with_custom_metadata(with_my_model: dict[str, Any]) -> None:
    meta = with_my_model["persistence"].get_metadata("my_model", "1.0.0")
    assert meta is not None
    for key, value in {
        "accuracy": 0.95,
        "f1_score": 0.92,
        "precision": 0.94,
        "recall": 0.91,
        "training_date": "2024-01-01",
        "dataset_version": "v2.1",
        "hyperparameters": {"n_estimators": 100, "max_depth": 10},
    }.items():
        assert meta.metadata[key] == value


def test_load_with_metadata(with_my_model: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    model, metadata = load_with_metadata(with_my_model["persistence"])
    X = with_my_model["X"]
    np.testing.assert_array_equal(model.predict(X), with_my_model["model"].predict(X))
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["Model: my_model", "Version: 1.0.0", "Accuracy: 0.95"]
    assert out[3] == f"Created: {metadata.created_at}" and metadata.created_at


def test_load_latest_version(with_my_model: dict[str, Any]) -> None:
    persistence = with_my_model["persistence"]
    persistence.save(with_my_model["model"], "my_model", "1.1.0", accuracy=0.97)
    model = load_latest_version(persistence)
    X = with_my_model["X"]
    np.testing.assert_array_equal(model.predict(X), with_my_model["model"].predict(X))
    assert persistence.resolve_version("my_model") == "1.1.0"


def test_list_models_and_versions(with_my_model: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    models, versions = list_models_and_versions(with_my_model["persistence"])
    assert models == ["my_model", "regression_model"]
    assert versions == ["1.0.0"]
    assert capsys.readouterr().out.splitlines() == [
        "Registered models: ['my_model', 'regression_model']",
        "Versions: ['1.0.0']",
    ]


def test_get_metadata(with_my_model: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    metadata = get_metadata(with_my_model["persistence"])
    assert metadata is not None
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Model type: LinearRegression"
    assert out[1].startswith("Model parameters: {") and "'fit_intercept': True" in out[1]


def test_compare_versions(with_my_model: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    comparison = compare_versions(with_my_model["persistence"])
    assert list(comparison["version"]) == ["1.0.0"]
    assert comparison["accuracy"].tolist() == [0.95] and comparison["f1_score"].tolist() == [0.92]
    out = capsys.readouterr().out
    for column in ("version", "accuracy", "f1_score", "created_at", "0.95", "0.92"):
        assert column in out


def test_using_manager_with_config(basic: dict[str, Any], workdir: Path) -> None:
    (workdir / "config.yaml").write_text(SEED_CONFIG)
    state = using_manager_with_config(basic["model"])
    try:
        assert state["model_path"] == workdir / "models" / "my_model" / "1.0.0" / "my_model_v1.0.0.joblib"
        X = basic["X"]
        np.testing.assert_array_equal(state["loaded"].predict(X), basic["model"].predict(X))
        assert state["metadata"].metadata["accuracy"] == 0.95
        # the manager shares the folder (and index) with the first example's persistence
        assert basic["persistence"].list_models() == ["my_model", "regression_model"]
        for handler in logging.getLogger("modelkeep").handlers:
            handler.flush()
        assert "my_model" in (workdir / "logs" / "app.log").read_text()
    finally:
        state["manager"].close()


def test_different_serialization_formats(basic: dict[str, Any], workdir: Path) -> None:
    persistence_pickle, persistence_joblib = different_serialization_formats()
    try:
        model, X = basic["model"], basic["X"]
        pkl = persistence_pickle.save(model, "fmt_model", "1.0.0")
        jbl = persistence_joblib.save(model, "fmt_model", "1.0.1")
        assert pkl.name == "fmt_model_v1.0.0.pkl.gz" and jbl.name == "fmt_model_v1.0.1.joblib"
        # both registries share models/registry.db: each loads what the other saved
        for p in (persistence_pickle, persistence_joblib):
            for version in ("1.0.0", "1.0.1"):
                np.testing.assert_array_equal(p.load("fmt_model", version).predict(X), model.predict(X))
    finally:
        persistence_pickle.close()
        persistence_joblib.close()
