"""import-mlflow against stores written by real MLflow 3.x (tests/data/mlflow, see generate.py there).

Every test copies a fixture store to its own folder first: the absolute paths MLflow recorded
point to where the fixtures were generated (a folder that no longer exists), so the importer
must relocate them, as after moving a store. Each test runs on the SQLite and the PostgreSQL
index (the ``persistence`` fixture); the SQL reader also reads the MLflow tables copied to
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pickle
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from modelkeep import ModelPersistence
from modelkeep.cli import cli
from modelkeep.formats.archive import ModelArchive
from modelkeep.mlflow_import import import_mlflow

DATA = Path(__file__).resolve().parent / "data" / "mlflow"
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text())
X = np.asarray(EXPECTED["input"])


class MlflowFixture:
    """A private copy of one fixture store, and what MLflow recorded about it."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self.expected: dict[str, Any] = EXPECTED[kind]
        self.uri = f"sqlite:///{folder / 'mlflow.db'}" if kind == "sqlite" else str(folder / "mlruns")

    def live_versions(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (name, number, info)
            for name, model in sorted(self.expected.items())
            for number, info in sorted(model["versions"].items())
        ]

    def model_folder(self, name: str, number: str) -> Path:
        """The MLflow model folder of a version, found the way a person would: by its MLmodel."""
        model_id = self.expected[name]["versions"][number]["source"].removeprefix("models:/")
        run_id = self.expected[name]["versions"][number]["run_id"]
        for mlmodel in sorted(self.folder.rglob("MLmodel")):
            text = mlmodel.read_text()
            if model_id.startswith("m-") and f"model_id: {model_id}" in text:
                return mlmodel.parent
            if not model_id.startswith("m-") and f"run_id: {run_id}" in text:
                return mlmodel.parent
        raise AssertionError(f"no MLmodel for {name} {number}")


@pytest.fixture(params=["sqlite", "filestore"])
def mlflow_store(request: pytest.FixtureRequest, tmp_path: Path) -> MlflowFixture:
    kind = request.param
    shutil.copytree(DATA / kind, tmp_path / "mlflow" / kind)
    return MlflowFixture(kind, tmp_path / "mlflow" / kind)


def _inputs(name: str) -> np.ndarray:
    return X[:, : EXPECTED["price_input_columns"]] if name == "price" else X


def _aliases(model: dict[str, Any]) -> dict[str, str]:
    """MLflow reports alias -> version number; modelkeep versions are strings."""
    return {alias: str(version) for alias, version in model["aliases"].items()}


def _iso(millis: int) -> str:
    return dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc).isoformat()


def _folder_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_every_version_loads_and_predicts_like_mlflow(
    persistence: ModelPersistence, mlflow_store: MlflowFixture
) -> None:
    report = import_mlflow(persistence, mlflow_store.uri)
    live = mlflow_store.live_versions()
    assert sorted((v.model_name, str(v.mlflow_version)) for v in report.imported) == [(n, v) for n, v, _ in live]
    assert report.refused == []
    assert report.skipped == [("churn", 4, "soft-deleted in MLflow (Deleted_Internal)")]
    assert "4" not in persistence.list_versions("churn")
    assert persistence.list_models() == sorted(mlflow_store.expected)
    for name, number, info in live:
        model, record = persistence.load(name, number, return_metadata=True)
        assert record.created_at == _iso(info["creation_timestamp"])
        assert record.metadata["params"] == info["params"]
        assert record.metadata["mlflow"]["metrics"] == info["metrics"]
        assert {k: record.metadata[k] for k in info["metrics"]} == info["metrics"]
        assert record.metadata["signature"]["inputs"] == json.loads(info["signature"]["inputs"])
        assert record.metadata["mlflow"]["source"] == info["source"]
        if info["flavor"] == "sklearn":
            assert record.artifact is not None and record.artifact.format == persistence.format.name
            assert np.array_equal(model.predict(_inputs(name)), np.asarray(info["predictions"]))
            assert record.metadata["mlflow"]["serialization_format"] == info["serialization_format"]
        else:  # pyfunc with custom code: the MLflow model folder, byte for byte
            assert isinstance(model, ModelArchive) and model.kind == "mlflow-model"
            unpacked = model.extract(mlflow_store.folder.parent / "unpacked")
            assert _folder_digests(unpacked) == _folder_digests(mlflow_store.model_folder(name, number))
            assert any(n.endswith("custom_model_code.py") for n in model.names())
    formats = {v.serialization_format for v in report.imported if v.model_name == "churn"}
    assert formats == {"cloudpickle", "pickle", "skops"}
    assert [(v.model_name, v.kind) for v in report.archived] == [("custom", "mlflow-folder")]


def test_aliases_tags_and_descriptions_come_along(persistence: ModelPersistence, mlflow_store: MlflowFixture) -> None:
    report = import_mlflow(persistence, mlflow_store.uri)
    for name, model in mlflow_store.expected.items():
        lifecycle = report.lifecycle[name]
        assert lifecycle["aliases"] == _aliases(model)
        assert lifecycle["tags"] == model["tags"]
        assert lifecycle["description"] == model["description"]
        for number, info in model["versions"].items():
            assert lifecycle["version_tags"].get(number, {}) == info["tags"]
            assert lifecycle["version_descriptions"].get(number) == info["description"]
            assert persistence.get_version(name, number).metadata["mlflow"]["tags"] == info["tags"]
    if not hasattr(persistence, "set_alias"):  # the lifecycle API is not in this registry yet
        assert report.lifecycle_applied is False
        return
    assert report.lifecycle_applied is True
    for name, model in mlflow_store.expected.items():
        assert persistence.get_aliases(name) == _aliases(model)  # type: ignore[attr-defined]
        assert persistence.get_tags(name) == model["tags"]  # type: ignore[attr-defined]
        for number, info in model["versions"].items():
            assert persistence.get_tags(name, version=number) == info["tags"]  # type: ignore[attr-defined]
            assert persistence.get_version(name, number).description == info["description"]  # type: ignore[attr-defined]


def test_a_second_run_imports_only_what_is_new(persistence: ModelPersistence, mlflow_store: MlflowFixture) -> None:
    first = import_mlflow(persistence, mlflow_store.uri, models=["churn"])
    assert {v.model_name for v in first.imported} == {"churn"}
    assert persistence.list_models() == ["churn"]
    churn_1 = persistence.get_version("churn", "1")
    second = import_mlflow(persistence, mlflow_store.uri)
    assert {v.model_name for v in second.imported} == set(mlflow_store.expected) - {"churn"}
    assert ("churn", 1, "already imported as 1") in second.skipped
    assert persistence.get_version("churn", "1").artifact == churn_1.artifact  # untouched
    third = import_mlflow(persistence, mlflow_store.uri)
    assert third.imported == [] and third.refused == []
    assert len(third.skipped) == len(mlflow_store.live_versions()) + 1


def test_dry_run_registers_nothing(persistence: ModelPersistence, mlflow_store: MlflowFixture) -> None:
    report = import_mlflow(persistence, mlflow_store.uri, dry_run=True)
    assert report.dry_run and len(report.imported) == len(mlflow_store.live_versions())
    assert persistence.list_models() == []
    assert "would import" in str(report)


def test_renumber_maps_versions_to_semver(persistence: ModelPersistence, mlflow_store: MlflowFixture) -> None:
    report = import_mlflow(persistence, mlflow_store.uri, models=["price"], renumber=True)
    assert persistence.list_versions("price") == ["1.0.0", "2.0.0"]
    assert report.lifecycle["price"]["aliases"] == {"production": "1.0.0"}
    assert persistence.get_version("price", "2.0.0").metadata["mlflow"]["version"] == 2


class SystemGadget:
    """A real malicious payload: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def test_a_hostile_pickle_in_the_store_is_refused_not_run(
    persistence: ModelPersistence, mlflow_store: MlflowFixture, tmp_path: Path
) -> None:
    marker = tmp_path / "executed"
    target = mlflow_store.model_folder("churn", "2") / "model.pkl"
    assert target.is_file()
    target.write_bytes(pickle.dumps(SystemGadget(f"touch {marker}")))
    report = import_mlflow(persistence, mlflow_store.uri, models=["churn"])
    assert not marker.exists()
    assert [(n, v) for n, v, _ in report.refused] == [("churn", 2)]
    assert "system" in report.refused[0][2]
    assert persistence.list_versions("churn") == ["1", "3"]


class Untrusted:
    """Any type outside skops' trusted list: skops would import and build it while loading."""

    def __init__(self) -> None:
        self.payload = "rm -rf ~"


def test_a_skops_file_with_untrusted_types_is_refused(
    persistence: ModelPersistence, mlflow_store: MlflowFixture
) -> None:
    import skops.io

    target = mlflow_store.model_folder("churn", "3") / "model.skops"
    assert target.is_file()
    skops.io.dump(Untrusted(), target)
    mlmodel = target.parent / "MLmodel"  # the file vouching for itself does not count
    text = mlmodel.read_text()
    assert "skops_trusted_types: null" in text
    mlmodel.write_text(text.replace("skops_trusted_types: null", f"skops_trusted_types: [{__name__}.Untrusted]"))
    report = import_mlflow(persistence, mlflow_store.uri, models=["churn"])
    assert [(n, v) for n, v, _ in report.refused] == [("churn", 3)]
    assert "Untrusted" in report.refused[0][2] and "not trusted" in report.refused[0][2]
    assert persistence.list_versions("churn") == ["1", "2"]


def test_a_model_name_modelkeep_cannot_use_is_refused_and_the_rest_imported(
    persistence: ModelPersistence, tmp_path: Path
) -> None:
    import sqlite3

    shutil.copytree(DATA / "sqlite", tmp_path / "store")
    db = sqlite3.connect(tmp_path / "store" / "mlflow.db")
    with db:  # MLflow allows spaces in names; modelkeep does not
        for table in ("registered_models", "model_versions", "registered_model_tags", "registered_model_aliases"):
            db.execute(f"UPDATE {table} SET name = 'Price model' WHERE name = 'price'")
    db.close()
    report = import_mlflow(persistence, f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert sorted((n, v) for n, v, _ in report.refused) == [("Price model", 1), ("Price model", 2)]
    assert "cannot be used in modelkeep" in report.refused[0][2]
    assert persistence.list_models() == ["churn", "custom"]


def test_unknown_model_and_bad_uri_are_clear_errors(persistence: ModelPersistence, mlflow_store: MlflowFixture) -> None:
    from modelkeep.errors import ConfigError, ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="nope"):
        import_mlflow(persistence, mlflow_store.uri, models=["nope"])
    with pytest.raises(ConfigError, match="unsupported MLflow tracking URI"):
        import_mlflow(persistence, "http://localhost:5000")
    assert persistence.list_models() == []


def test_cli_import_mlflow_with_model_filter_and_json(tmp_path: Path, mlflow_store: MlflowFixture) -> None:
    models_dir = tmp_path / "models"
    args = ["--models-dir", str(models_dir), "import-mlflow", "--tracking-uri", mlflow_store.uri]
    result = CliRunner().invoke(cli, [*args, "--model", "price", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(v["model_name"], v["version"]) for v in data["imported"]] == [("price", "1"), ("price", "2")]
    again = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert again.exit_code == 0, again.output
    assert "would import 4 version(s) (1 as MLflow model folders)" in again.output
    with ModelPersistence(models_dir) as p:
        assert p.list_models() == ["price"]
    bad = CliRunner().invoke(cli, ["--models-dir", str(models_dir), "import-mlflow", "--tracking-uri", "ftp://x"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: unsupported MLflow tracking URI")


# -- the MLflow tables on PostgreSQL -----------------------------------------------------------
MLFLOW_TABLES = [
    "registered_models",
    "model_versions",
    "registered_model_tags",
    "model_version_tags",
    "registered_model_aliases",
    "runs",
    "latest_metrics",
    "metrics",
    "params",
    "logged_models",
]


def _generic(type_: Any) -> Any:
    try:
        return type_.as_generic()
    except NotImplementedError:
        from sqlalchemy import Text

        return Text()


@pytest.fixture
def mlflow_on_postgres(tmp_path: Path) -> Iterator[MlflowFixture]:
    """The SQLite fixture's MLflow tables copied into a private PostgreSQL schema."""
    from sqlalchemy import Column, MetaData, Table, create_engine, inspect, text

    from tests.conftest import PG_URL

    if not PG_URL:
        pytest.skip("MODELKEEP_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    shutil.copytree(DATA / "sqlite", tmp_path / "mlflow" / "sqlite")
    fixture = MlflowFixture("sqlite", tmp_path / "mlflow" / "sqlite")
    schema = f"mlflow_{uuid.uuid4().hex[:10]}"
    source = create_engine(fixture.uri)
    pg = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    meta = MetaData()
    meta.reflect(source, only=[t for t in MLFLOW_TABLES if t in inspect(source).get_table_names()])
    copies = MetaData(schema=schema)
    with pg.begin() as conn, source.connect() as src:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        for table in meta.sorted_tables:  # columns and rows only: the reader needs nothing else
            copy = Table(table.name, copies, *[Column(c.name, _generic(c.type)) for c in table.columns])
            copy.create(conn)
            rows = [dict(r._mapping) for r in src.execute(table.select())]
            if rows:
                conn.execute(copy.insert(), rows)
    source.dispose()
    # MLflow's relative artifact folders live beside its database: keep them, point at PostgreSQL.
    (fixture.folder / "mlflow.db").unlink()
    fixture.uri = f"{PG_URL}?options=-csearch_path%3D{schema}"
    yield fixture
    with pg.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    pg.dispose()


@pytest.mark.postgres
def test_reads_an_mlflow_store_on_postgresql(tmp_path: Path, mlflow_on_postgres: MlflowFixture) -> None:
    with ModelPersistence(tmp_path / "models") as p:
        report = import_mlflow(p, mlflow_on_postgres.uri, artifacts_dir=mlflow_on_postgres.folder)
        assert report.refused == [] and len(report.imported) == len(mlflow_on_postgres.live_versions())
        for name, number, info in mlflow_on_postgres.live_versions():
            record = p.get_version(name, number)
            assert record.metadata["params"] == info["params"]
            if info["flavor"] == "sklearn":
                predicted = p.load(name, number).predict(_inputs(name))
                assert np.array_equal(predicted, np.asarray(info["predictions"]))
        assert report.lifecycle["churn"]["aliases"] == _aliases(mlflow_on_postgres.expected["churn"])


def test_readme_import_mlflow_examples_run_as_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests._readme import readme_blocks, run_cli_lines

    shutil.copytree(DATA / "sqlite", tmp_path, dirs_exist_ok=True)  # ./mlflow.db and its artifacts
    shutil.copytree(DATA / "filestore", tmp_path / "fs")
    monkeypatch.chdir(tmp_path)
    [commands] = readme_blocks("Moving in: import an MLflow registry", "bash", "docs/mlflow.md")
    lines = commands.replace("./mlruns", str(tmp_path / "fs" / "mlruns")).splitlines()
    results = run_cli_lines("\n".join(lines[:2]))
    assert "would import" in results[0].output
    assert {v["model_name"] for v in json.loads(results[1].output)["imported"]} == {"churn"}
    monkeypatch.setenv("MODELKEEP_MODELS_DIR", str(tmp_path / "renumbered"))
    run_cli_lines(lines[2])
    with ModelPersistence(tmp_path / "renumbered") as p:
        assert p.list_versions("price") == ["1.0.0", "2.0.0"]


def test_progress_gets_one_step_per_version(persistence: ModelPersistence, mlflow_store: MlflowFixture) -> None:
    from contextlib import contextmanager

    calls: list[tuple[str, int | None]] = []
    steps: list[int] = []

    @contextmanager
    def progress(description: str, total: int | None) -> Iterator[Any]:
        calls.append((description, total))
        yield steps.append

    import_mlflow(persistence, mlflow_store.uri, dry_run=True, progress=progress)
    total = len(mlflow_store.live_versions()) + 1  # and the soft-deleted one, skipped
    assert calls == [(f"importing {total} MLflow version(s)", total)] and steps == [1] * total


def test_the_cli_progress_bar_counts_versions() -> None:
    import io

    from rich.console import Console

    from modelkeep.cli_mlflow import PROGRESS_MIN_VERSIONS, version_progress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with version_progress(False, console)("importing", 10_000) as advance:  # disabled
        advance(1)
    with version_progress(True, console)("importing", PROGRESS_MIN_VERSIONS - 1) as advance:  # too small
        advance(1)
    assert buffer.getvalue() == ""
    with version_progress(True, console)("importing", PROGRESS_MIN_VERSIONS) as advance:
        for _ in range(PROGRESS_MIN_VERSIONS):
            advance(1)
    assert f"{PROGRESS_MIN_VERSIONS}/{PROGRESS_MIN_VERSIONS}" in buffer.getvalue()


def test_a_model_archive_never_extracts_outside_its_folder(tmp_path: Path) -> None:
    import io
    import tarfile

    from modelkeep.errors import IntegrityError

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("MLmodel", "../escaped.py"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(IntegrityError, match=r"'\.\.'"):
        ModelArchive(buf.getvalue(), "mlflow-model").extract(tmp_path / "out")
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "out" / "MLmodel").exists()
