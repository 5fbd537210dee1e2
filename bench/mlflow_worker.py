"""MLflow measurement, run with the interpreter of ``bench/.venv-mlflow`` by mlflow_baseline.py.

Prints one JSON object on stdout: MLflow's version and the median time of
save+register (``start_run`` + ``mlflow.sklearn.log_model(...,
registered_model_name=...)``) and of ``mlflow.sklearn.load_model("models:/...")``,
against a SQLite tracking/registry database and a file artifact store in a
temporary directory. Everything MLflow prints goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workloads import build_forest, pickled_size, small_model


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


#: Types the skops-based default serializer of recent MLflow refuses unless trusted explicitly.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def _log_options(mlflow: Any) -> dict[str, Any]:
    """Version-dependent ``log_model`` arguments: MLflow 3 names the artifact ``name``
    (MLflow 2: ``artifact_path``); skops-based versions need the tree type trusted."""
    params = inspect.signature(mlflow.sklearn.log_model).parameters
    options: dict[str, Any] = {"name": "model"} if "name" in params else {"artifact_path": "model"}
    if "skops_trusted_types" in params:
        options["skops_trusted_types"] = TRUSTED_TYPES
    return options


def _log_model(mlflow: Any, model: object, registered_name: str, **extra: Any) -> None:
    """``log_model`` with ``registered_model_name`` in a new run: save plus register."""
    with mlflow.start_run():
        mlflow.sklearn.log_model(model, registered_model_name=registered_name, **_log_options(mlflow), **extra)


def _serialization_used(mlflow: Any, registered_name: str) -> str | None:
    """The serialization format MLflow recorded for version 1 of ``registered_name``."""
    try:
        info = mlflow.models.get_model_info(f"models:/{registered_name}/1")
        return info.flavors.get("sklearn", {}).get("serialization_format")
    except Exception:  # only informative
        return None


def _measure(mlflow: Any, model: object, registered_name: str, repeats: int, **extra: Any) -> dict[str, Any]:
    """One untimed warm-up, then ``repeats`` timed save+register and load calls."""
    _log_model(mlflow, model, registered_name, **extra)
    saves, loads = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        _log_model(mlflow, model, registered_name, **extra)
        saves.append(time.perf_counter() - began)
    for version in range(2, repeats + 2):
        began = time.perf_counter()
        mlflow.sklearn.load_model(f"models:/{registered_name}/{version}")
        loads.append(time.perf_counter() - began)
    return {
        "model_bytes": pickled_size(model),
        "serialization": _serialization_used(mlflow, registered_name),
        "save_register": _summary(saves),
        "load": _summary(loads),
    }


def _configure(mlflow: Any, root: Path) -> None:
    """A local SQLite tracking/registry store and a file artifact store under ``root``."""
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the small model and, when asked, the large forest."""
    import mlflow

    out: dict[str, Any] = {"mlflow_version": mlflow.__version__}
    with tempfile.TemporaryDirectory(dir=Path(args.tmp).resolve()) as tmp:
        _configure(mlflow, Path(tmp))
        # label -> (model builder, repeats, extra log_model arguments)
        workloads: dict[str, tuple[Any, int, dict[str, Any]]] = {
            "small": (small_model, args.small_repeats, {}),
            "small_no_inference": (small_model, args.small_repeats, {"pip_requirements": ["scikit-learn"]}),
        }
        if args.large_repeats > 0:
            workloads["forest"] = (lambda: build_forest(args.forest_mb), args.large_repeats, {})
        for label, (build, repeats, extra) in workloads.items():
            try:
                out[label] = _measure(mlflow, build(), label, repeats, **extra)
            except Exception as exc:  # report the failure of one workload, keep the other
                out[label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="MLflow save+register and load timings as JSON")
    parser.add_argument("--tmp", required=True, help="directory for the temporary MLflow store")
    parser.add_argument("--small-repeats", type=int, default=15)
    parser.add_argument("--large-repeats", type=int, default=3)
    parser.add_argument("--forest-mb", type=int, default=110)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
