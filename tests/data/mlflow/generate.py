"""Write the MLflow fixtures modelkeep's importer is tested against, with REAL MLflow 3.x.

Run it in a virtual environment of its own (MLflow is never a modelkeep dependency)::

    python -m venv /tmp/mlflow-gen && /tmp/mlflow-gen/bin/pip install mlflow scikit-learn skops
    /tmp/mlflow-gen/bin/python tests/data/mlflow/generate.py

It replaces, beside this file:

* ``sqlite/mlflow.db`` + ``sqlite/artifacts/``: a SQLAlchemy tracking and registry store;
* ``filestore/mlruns/``: a file store (YAML meta files), artifacts inside it;
* ``expected.json``: per store, every registered version with its aliases, tags, descriptions,
  run metrics and params, and the predictions ``mlflow.sklearn.load_model`` (or
  ``mlflow.pyfunc.load_model``) makes on the fixed input ``X``. The script checks that the
  sklearn and pyfunc loaders agree before recording them.

Both stores hold the same registry:

* ``churn`` (LogisticRegression): MLflow 3 logged models (``models:/m-<id>``), one version per
  serialization format MLflow offers (cloudpickle, pickle, skops), aliases, model and version
  tags, descriptions, a signature, and a 4th version that is soft-deleted
  (``current_stage='Deleted_Internal'``), which an importer must skip.
* ``price`` (Ridge): the MLflow 2.x runs-based layout, i.e. the model folder logged as run
  artifacts and registered from ``runs:/<run_id>/model`` (version 1) or from the artifact URI
  (version 2).
* ``custom``: a pyfunc ``PythonModel`` with custom code (``code_paths``).

The stores are written in a temporary folder and then copied here: the absolute ``file://``
paths MLflow records inside them point nowhere, so the importer must relocate them under the
store's folder (as after moving a store to another machine).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression, Ridge

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from custom_model_code import ScaledSum  # noqa: E402

warnings.filterwarnings("ignore")
X_ALL, Y_ALL = load_iris(return_X_y=True)
#: The fixed input every version predicts on (recorded in expected.json).
X = X_ALL[::15]


def _run(name: str, params: dict[str, Any], metrics: dict[str, float]) -> Any:
    run = mlflow.start_run(run_name=name)
    mlflow.log_params(params)
    for key, value in metrics.items():
        mlflow.log_metric(key, value, step=0)
        mlflow.log_metric(key, value + 0.001, step=1)  # the latest value is what counts
    return run


def _churn(client: MlflowClient) -> None:
    """MLflow 3: log_model creates a logged model; registering it gives source models:/m-<id>."""
    formats = ["cloudpickle", "pickle", "skops"]
    supported = getattr(mlflow.sklearn, "SUPPORTED_SERIALIZATION_FORMATS", formats)
    for i, fmt in enumerate([f for f in formats if f in supported] + ["cloudpickle"]):
        c = [1.0, 0.5, 0.1, 2.0][i]
        model = LogisticRegression(C=c, max_iter=500).fit(X_ALL, Y_ALL)
        with _run(f"churn-{i + 1}", {"C": c, "max_iter": 500}, {"accuracy": float(model.score(X_ALL, Y_ALL))}):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format=fmt,
                signature=infer_signature(X_ALL, model.predict(X_ALL)),
                registered_model_name="churn",
            )
        print("churn", info.registered_model_version, fmt, info.model_uri)
    client.update_registered_model("churn", description="Predicts churn from four measurements.")
    client.set_registered_model_tag("churn", "team", "growth")
    client.set_registered_model_tag("churn", "domain", "retention")
    client.update_model_version("churn", "2", description="Stronger regularization.")
    client.set_model_version_tag("churn", "2", "validated", "true")
    client.set_model_version_tag("churn", "1", "dataset", "iris-2024")
    client.set_registered_model_alias("churn", "champion", "2")
    client.set_registered_model_alias("churn", "challenger", "3")
    client.delete_model_version("churn", "4")  # soft delete: current_stage = Deleted_Internal


def _price(client: MlflowClient, workdir: Path) -> None:
    """The runs-based 2.x layout: the model folder is a run artifact, registered from the run."""
    for version, alpha in ((1, 1.0), (2, 0.1)):
        model = Ridge(alpha=alpha).fit(X_ALL[:, :3], X_ALL[:, 3])
        local = workdir / f"price-{version}"
        mlflow.sklearn.save_model(
            model,
            str(local),
            serialization_format="pickle",
            signature=infer_signature(X_ALL[:, :3], model.predict(X_ALL[:, :3])),
        )
        with _run(f"price-{version}", {"alpha": alpha}, {"r2": float(model.score(X_ALL[:, :3], X_ALL[:, 3]))}) as run:
            mlflow.log_artifacts(str(local), artifact_path="model")
        if version == 1:
            client.create_registered_model("price", tags={"team": "pricing"})
            source = f"runs:/{run.info.run_id}/model"
        else:
            source = f"{run.info.artifact_uri}/model"
        mv = client.create_model_version("price", source, run_id=run.info.run_id)
        print("price", mv.version, source)
    client.set_registered_model_alias("price", "production", "1")


def _custom(client: MlflowClient) -> None:
    with _run("custom-1", {"factor": 2.5}, {"mae": 0.0}):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ScaledSum(2.5),
            code_paths=[str(HERE / "custom_model_code.py")],
            signature=infer_signature(X, np.zeros(len(X))),
            registered_model_name="custom",
        )
    print("custom", info.registered_model_version, info.model_uri)
    client.set_registered_model_alias("custom", "live", "1")


def _expected(client: MlflowClient) -> dict[str, Any]:
    """Every live version, with what MLflow itself says about it and predicts with it."""
    out: dict[str, Any] = {}
    for rm in client.search_registered_models():
        versions: dict[str, Any] = {}
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            uri = f"models:/{rm.name}/{mv.version}"
            pyfunc = mlflow.pyfunc.load_model(uri)
            predicted = np.asarray(pyfunc.predict(X if rm.name != "price" else X[:, :3]))
            flavors = pyfunc.metadata.flavors
            if "sklearn" in flavors:
                native = mlflow.sklearn.load_model(uri).predict(X if rm.name != "price" else X[:, :3])
                assert np.array_equal(np.asarray(native), predicted), (rm.name, mv.version)
            run = client.get_run(mv.run_id) if mv.run_id else None
            versions[str(mv.version)] = {
                "creation_timestamp": mv.creation_timestamp,
                "description": mv.description or None,
                "tags": dict(mv.tags),
                "aliases": sorted(mv.aliases),
                "source": mv.source,
                "run_id": mv.run_id,
                "flavor": "sklearn" if "sklearn" in flavors else "python_function",
                "serialization_format": flavors.get("sklearn", {}).get("serialization_format"),
                "metrics": dict(run.data.metrics) if run else {},
                "params": dict(run.data.params) if run else {},
                "signature": pyfunc.metadata.signature.to_dict() if pyfunc.metadata.signature else None,
                "predictions": predicted.tolist(),
            }
        out[rm.name] = {
            "description": rm.description or None,
            "tags": dict(rm.tags),
            "aliases": dict(rm.aliases),
            "versions": versions,
        }
    return out


def _generate(tracking_uri: str, artifact_location: str | None, workdir: Path) -> dict[str, Any]:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    exp = client.create_experiment("fixtures", artifact_location=artifact_location)
    mlflow.set_experiment(experiment_id=exp)
    _churn(client)
    _price(client, workdir)
    _custom(client)
    expected = _expected(client)
    deleted = [mv.version for mv in client.search_model_versions("name='churn'")]
    assert "4" not in deleted, "version 4 should be soft-deleted"
    return expected


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 keeps the file store in maintenance mode
    expected: dict[str, Any] = {"mlflow_version": mlflow.__version__, "input": X.tolist(), "price_input_columns": 3}
    # Generated in a folder that is deleted afterwards, so that the absolute paths MLflow records
    # point nowhere and every reader must relocate them (as after moving a store).
    with tempfile.TemporaryDirectory(prefix="mlflow-fixtures-") as tmp:
        sqlite_dir, file_dir = Path(tmp) / "sqlite", Path(tmp) / "filestore"
        sqlite_dir.mkdir()
        file_dir.mkdir()
        expected["generated_under"] = tmp
        expected["sqlite"] = _generate(
            f"sqlite:///{sqlite_dir / 'mlflow.db'}", (sqlite_dir / "artifacts").as_uri(), Path(tmp) / "s"
        )
        mlflow.end_run()
        expected["filestore"] = _generate(
            (file_dir / "mlruns").as_uri(), None, Path(tmp) / "f"
        )  # the file store keeps artifacts inside mlruns/<experiment>/
        for folder in (sqlite_dir, file_dir):
            shutil.rmtree(HERE / folder.name, ignore_errors=True)
            shutil.copytree(folder, HERE / folder.name)
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print("wrote", HERE / "expected.json")


if __name__ == "__main__":
    main()
