"""Small model: save plus register, and load, for modelkeep next to joblib and pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from baselines import DesignFloor, floor_index, joblib_read, joblib_save, pickle_read, pickle_save, save_floor
from common import Settings, compare_interleaved, error_text, fsync_latency, log, scratch_dir
from save_costs import count_round_trips, count_syncs, postgres_url
from subject import open_registry
from targets import SMALL_DESIGN_FLOOR, SMALL_FLOOR
from workloads import pickled_size, small_model

NAME = "small"
NO_GIT = "modelkeep (default) save, MODELKEEP_GIT=0"
#: The durable steps of a save done raw (bench/baselines.py's save_floor): what no registry code can avoid.
FLOOR = SMALL_FLOOR
#: modelkeep configurations measured for the small model: label -> ModelPersistence options.
CONFIGS = {
    "modelkeep (default)": {},
    "modelkeep (compress=False)": {"compress": False},
}


def _save_cases(model: object, root: Path, registries: dict[str, Any]) -> dict[str, Any]:
    """One timed callable per saving method; modelkeep allocates the versions itself."""
    index = floor_index(root / "floor.db")
    record = _sidecar_like(registries)
    cases: dict[str, Any] = {
        "joblib.dump+fsync": lambda i: joblib_save(model, root / f"j{i}.joblib"),
        "pickle5+fsync": lambda i: pickle_save(model, root / f"p{i}.pkl"),
        FLOOR: lambda i: save_floor(model, root, i, index, record),
    }
    for label, registry in registries.items():
        cases[f"{label} save"] = lambda i, r=registry: r.save(model, NAME)
    default = registries.get("modelkeep (default)")
    if default is not None:
        design = DesignFloor(root, Path(default.models_dir) / "registry.db", NAME)
        cases[SMALL_DESIGN_FLOOR] = lambda i: design.save(model, i)
        # The bench runs inside a git checkout, so each save also reads `git status` for its
        # lineage; this case shows the save without it (as outside a repository).
        cases[NO_GIT] = lambda i: _without_git(lambda: default.save(model, NAME))
    return cases


def _sidecar_like(registries: dict[str, Any]) -> bytes:
    """Bytes the size of a small save's sidecar: the record of a first save of this model, else 1.9 KB."""
    for registry in registries.values():
        return json.dumps(registry.save_version(small_model(), NAME).to_dict()).encode()
    return b"{" + b" " * 1900 + b"}"


def _without_git(fn: Any) -> Any:
    old = os.environ.get("MODELKEEP_GIT")
    os.environ["MODELKEEP_GIT"] = "0"
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["MODELKEEP_GIT"]
        else:
            os.environ["MODELKEEP_GIT"] = old


def _retrain(model: Any) -> Any:
    """A ``before`` hook that nudges the intercept, so every save stores new bytes.

    Saving byte-identical models would let modelkeep's content dedup skip the
    write, which is not what a retrained model does.
    """
    base = float(model.intercept_[0])

    def before(case: str, i: int) -> None:
        model.intercept_[0] = base + (i + 10) * 1e-9 + hash(case) % 1000 * 1e-12

    return before


def _load_cases(root: Path, registries: dict[str, Any]) -> dict[str, Any]:
    """One timed callable per loading method, each reading what the save step wrote."""
    cases: dict[str, Any] = {
        "joblib.load": lambda i: joblib_read(root / "j0.joblib"),
        "pickle.load": lambda i: pickle_read(root / "p0.pkl"),
    }
    for label, registry in registries.items():
        versions = registry.list_versions(NAME)
        if versions:
            cases[f"{label} load (explicit version)"] = lambda i, r=registry, v=versions[0]: r.load(NAME, v)
            cases[f"{label} load (latest)"] = lambda i, r=registry: r.load(NAME)
    return cases


def _open_all(modelkeep: Any, root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Open one registry per configuration; failures are returned as error texts."""
    registries: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for n, (label, options) in enumerate(CONFIGS.items()):
        try:
            registries[label] = open_registry(modelkeep, root / f"registry{n}", **options)
        except Exception as exc:
            errors[label] = error_text(exc)
    return registries, errors


def run(settings: Settings, modelkeep: Any) -> dict[str, Any]:
    """Measure the small-model group; modelkeep rows are missing when it is not importable."""
    model = small_model()
    out: dict[str, Any] = {"model_bytes": pickled_size(model)}
    with scratch_dir("small") as root:
        registries, errors = _open_all(modelkeep, root) if modelkeep is not None else ({}, {})
        if errors:
            out["modelkeep_errors"] = errors
        out["fsync_before"] = fsync_latency(root)
        log("small: save")
        out["save"] = compare_interleaved(
            _save_cases(model, root, registries), settings.small_model_repeats, warmup=2, before=_retrain(model)
        )
        log("small: load")
        out["load"] = compare_interleaved(_load_cases(root, registries), settings.small_model_repeats, warmup=2)
        out["fsync_after"] = fsync_latency(root)
        default = registries.get("modelkeep (default)")
        if default is not None:
            out["syncs_per_save"] = _counted(lambda: count_syncs(default, lambda: default.save(model, NAME)))
            log("small: save_many")
            out["save_many"] = _counted(lambda: _save_many(model, default, root))
        for registry in registries.values():
            registry.close()
        if modelkeep is not None:
            out["postgres"] = _postgres(modelkeep, model, root, settings)
    return out


#: Versions per ``save_many`` call: one batch at the default batch size.
BATCH = 256


def _save_many(model: Any, registry: Any, root: Path) -> dict[str, Any]:
    """``save_many`` of :data:`BATCH` retrained models, as one model's versions (a save every
    epoch) and as one model per customer, seconds per version (median of 3 calls), beside
    ``joblib.dump`` + fsync of the same models one by one in the same rounds."""
    import copy
    import statistics
    import time

    models = []
    for i in range(BATCH):
        retrained = copy.deepcopy(model)
        retrained.intercept_[0] += (i + 1) * 1e-9
        models.append(retrained)
    times: dict[str, list[float]] = {"one model": [], "a model each": [], "joblib.dump+fsync": []}
    for round_ in range(3):
        for case in times:
            started = time.perf_counter()
            if case == "joblib.dump+fsync":
                for i, m in enumerate(models):
                    joblib_save(m, root / f"many-{round_}-{i}.joblib")
            else:
                registry.save_many(
                    {"model": m, "model_name": "epochs" if case == "one model" else f"customer-{round_}-{i:03d}"}
                    for i, m in enumerate(models)
                )
            times[case].append((time.perf_counter() - started) / BATCH)
    return {"versions": BATCH, **{case: statistics.median(t) for case, t in times.items()}}


def _counted(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        return {"error": error_text(exc)}


def _postgres(modelkeep: Any, model: Any, root: Path, settings: Settings) -> dict[str, Any]:
    """Round trips of one save against PostgreSQL (in a schema of its own), and save times."""
    url = postgres_url()
    if not url:
        return {"skipped": "set MODELKEEP_BENCH_POSTGRES_URL (or MODELKEEP_TEST_POSTGRES_URL)"}
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"mk_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        registry = modelkeep.ModelPersistence(models_dir=str(root / "pg"), registry_url=url, index_schema=schema)
        try:
            log("small: PostgreSQL save")
            timed = compare_interleaved(
                {
                    "joblib.dump+fsync": lambda i: joblib_save(model, root / f"pg{i}.joblib"),
                    "modelkeep save (PostgreSQL index)": lambda i: registry.save(model, NAME),
                },
                max(5, settings.small_model_repeats // 3),
                warmup=2,
                before=_retrain(model),
            )
            trips = _counted(lambda: count_round_trips(registry, lambda: registry.save(model, NAME)))
            return {"save": timed, "round_trips_per_save": trips}
        finally:
            registry.close()
    except Exception as exc:
        return {"error": error_text(exc)}
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
