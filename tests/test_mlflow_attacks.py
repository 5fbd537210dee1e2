"""An attacker's MLflow store cannot make ``import-mlflow`` copy folders from elsewhere on the
reader's machine.

The attacker hands over an MLflow store (an ``mlruns`` folder or a SQLite file with its
artifacts). Every location the importer follows is written in that store: a version's
``source`` and ``storage_location``, its run's ``artifact_uri``, an ``MLmodel``'s
``pickled_model``. Before, any local folder holding an ``MLmodel`` file was archived into the
registry (an attacker who knows or guesses a path copies ``credentials.txt`` beside it into a
registry they can read). Now only folders inside the store's artifact root are read
(``artifacts_dir`` to name another), symbolic links resolved, and anything else is refused,
naming it. Each case runs against the real fixture stores of ``tests/data/mlflow``, on both
the file store and the SQLite store reader.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from modelkeep import ModelPersistence
from modelkeep.cli import cli
from modelkeep.mlflow_import import import_mlflow
from modelkeep.mlflow_import.mlmodel import read_mlmodel

DATA = Path(__file__).resolve().parent / "data" / "mlflow"
EXPECTED = json.loads((DATA / "expected.json").read_text())
SECRET = "aws_secret_access_key = not-for-the-registry\n"


class HostileStore:
    """A copy of a fixture store whose ``custom 1`` the attacker points at ``victim``."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.folder = tmp_path / "mlflow" / kind
        shutil.copytree(DATA / kind, self.folder)
        self.root = self.folder / "mlruns" if kind == "filestore" else self.folder
        self.uri = str(self.root) if kind == "filestore" else f"sqlite:///{self.folder / 'mlflow.db'}"
        # The victim: a real MLflow model folder (the fixture's pyfunc model, which the importer
        # archives whole) outside the store, with a secret beside its MLmodel.
        self.outside = tmp_path / "outside"
        self.victim = self.outside / "model"
        shutil.copytree(self._model_folder("custom"), self.victim)
        (self.victim / "credentials.txt").write_text(SECRET)
        assert read_mlmodel(self.victim).flavor == "python_function"  # a valid MLflow model folder

    def _model_folder(self, name: str) -> Path:
        model_id = EXPECTED[self.kind][name]["versions"]["1"]["source"].removeprefix("models:/")
        for mlmodel in sorted(self.folder.rglob("MLmodel")):
            if f"model_id: {model_id}" in mlmodel.read_text():
                return mlmodel.parent
        raise AssertionError(f"no MLmodel for {name}")

    @property
    def run_id(self) -> str:
        return str(EXPECTED[self.kind]["custom"]["versions"]["1"]["run_id"])

    def point(self, *, source: str | None, storage_location: str | None) -> None:
        """Rewrite ``custom 1``'s ``source`` and ``storage_location``, as the store's writer can."""
        if self.kind == "filestore":
            meta_file = self.root / "models" / "custom" / "version-1" / "meta.yaml"
            meta = yaml.safe_load(meta_file.read_text())
            meta.update(source=source, storage_location=storage_location, model_id=None)
            meta_file.write_text(yaml.safe_dump(meta))
            return
        with sqlite3.connect(self.folder / "mlflow.db") as db:
            db.execute(
                "UPDATE model_versions SET source = ?, storage_location = ? WHERE name = 'custom' AND version = 1",
                (source, storage_location),
            )

    def point_run(self, artifact_uri: str) -> None:
        """Rewrite the ``artifact_uri`` of ``custom 1``'s run."""
        if self.kind == "filestore":
            [meta_file] = self.root.glob(f"*/{self.run_id}/meta.yaml")
            meta = yaml.safe_load(meta_file.read_text())
            meta["artifact_uri"] = artifact_uri
            meta_file.write_text(yaml.safe_dump(meta))
            return
        with sqlite3.connect(self.folder / "mlflow.db") as db:
            db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (artifact_uri, self.run_id))


@pytest.fixture(params=["filestore", "sqlite"])
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> HostileStore:
    return HostileStore(request.param, tmp_path)


def _absolute(store: HostileStore) -> None:
    store.point(source=str(store.victim), storage_location=None)


def _file_uri(store: HostileStore) -> None:
    store.point(source=None, storage_location=store.victim.as_uri())


def _run_artifact_uri(store: HostileStore) -> None:
    store.point(source=f"runs:/{store.run_id}/model", storage_location=None)
    store.point_run(store.outside.as_uri())


def _symlink_inside(store: HostileStore) -> None:
    (store.root / "innocent").symlink_to(store.victim, target_is_directory=True)
    store.point(source=str(store.root / "innocent"), storage_location=None)


ATTACKS = {
    "source: /absolute/path": _absolute,
    "storage_location: file:///absolute/path": _file_uri,
    "runs:/ with the run's artifact_uri outside": _run_artifact_uri,
    "a symbolic link inside the store": _symlink_inside,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_folder_outside_the_artifact_root_is_refused_naming_it(
    tmp_path: Path, hostile: HostileStore, attack: str
) -> None:
    ATTACKS[attack](hostile)
    live = sum(len(m["versions"]) for m in EXPECTED[hostile.kind].values())
    with ModelPersistence(tmp_path / "models") as p:
        dry = import_mlflow(p, hostile.uri, dry_run=True)
        assert [(n, v) for n, v, _ in dry.refused] == [("custom", 1)]
        report = import_mlflow(p, hostile.uri)
        [(name, number, why)] = report.refused
        assert (name, number) == ("custom", 1)
        assert str(hostile.victim) in why and "artifact root" in why and "--artifacts-dir" in why
        assert p.get_metadata("custom", "1") is None
        assert len(report.imported) == live - 1  # the rest of the store still comes in
        assert "custom" not in p.list_models()


def test_the_cli_refuses_and_names_the_folder(tmp_path: Path, hostile: HostileStore) -> None:
    _absolute(hostile)
    result = CliRunner().invoke(
        cli, ["--models-dir", str(tmp_path / "models"), "import-mlflow", "--tracking-uri", hostile.uri]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"refused custom 1: custom version 1: refused {str(hostile.victim)!r}" in result.output


def test_artifacts_dir_is_how_a_user_allows_another_folder(tmp_path: Path, hostile: HostileStore) -> None:
    _absolute(hostile)
    with ModelPersistence(tmp_path / "models") as p:
        report = import_mlflow(p, hostile.uri, artifacts_dir=hostile.outside, models=["custom"])
        assert [(v.model_name, v.kind) for v in report.imported] == [("custom", "mlflow-folder")]


def test_a_pickled_model_linked_to_outside_the_folder_is_refused(tmp_path: Path, hostile: HostileStore) -> None:
    """The sklearn model file inside the store is a symbolic link to a pickle elsewhere."""
    folder = hostile._model_folder("churn")
    name = str(read_mlmodel(folder).flavors["sklearn"]["pickled_model"])
    elsewhere = hostile.outside / "other.pkl"
    hostile.outside.mkdir(exist_ok=True)
    shutil.move(folder / name, elsewhere)
    (folder / name).symlink_to(elsewhere)
    with ModelPersistence(tmp_path / "models") as p:
        report = import_mlflow(p, hostile.uri, models=["churn"])
        refused = {number: why for _, number, why in report.refused}
        assert 1 in refused and "outside its folder" in refused[1]
        assert p.get_metadata("churn", "1") is None


def test_a_tag_file_linked_to_outside_the_store_is_not_read(tmp_path: Path) -> None:
    store = HostileStore("filestore", tmp_path)
    secret = store.outside / "credentials.txt"
    secret.write_text(SECRET)
    (store.root / "models" / "churn" / "tags").mkdir(exist_ok=True)
    (store.root / "models" / "churn" / "tags" / "owner").symlink_to(secret)
    with ModelPersistence(tmp_path / "models") as p:
        report = import_mlflow(p, store.uri, models=["churn"], dry_run=True)
        assert "owner" not in report.lifecycle["churn"]["tags"]
        assert SECRET not in json.dumps(report.to_dict())
