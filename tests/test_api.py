"""The public ModelPersistence API, run on both index backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import pickle
import platform
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

import modelkeep
from modelkeep import (
    ArtifactNotFoundError,
    BackendUnavailableError,
    ConfigError,
    IntegrityError,
    InvalidNameError,
    MetadataError,
    ModelKeepError,
    ModelMetadata,
    ModelNotFoundError,
    ModelPersistence,
    ModelSummary,
    SerializationError,
    SignatureError,
    StorageError,
    UnsafeModelError,
    VersionExistsError,
    VersionNotFoundError,
)

#: Also run through a registry server (conftest.pytest_generate_tests): on SQLite + a folder, and on
#: PostgreSQL + S3 with presigned transfers (a server on PostgreSQL + a folder adds time, not cover).
ALSO_OVER_HTTP = ("sqlite-http", "postgresql-http-pg-s3")


def _artifact_path(p: ModelPersistence, name: str, version: str) -> Path:
    rec = p.get_version(name, version)
    assert rec.artifact is not None
    return Path(p.models_dir) / rec.artifact.key


def _sidecar_path(p: ModelPersistence, name: str, version: str) -> Path:
    return Path(p.models_dir) / name / version / f"{name}_v{version}_metadata.json"


def _files(root: Path) -> set[str]:
    """Every file under ``root`` except staging leftovers (there should be none)."""
    return {str(f.relative_to(root)) for f in root.rglob("*") if f.is_file()} if root.exists() else set()


# --------------------------------------------------------------------------------------
# public surface
# --------------------------------------------------------------------------------------


def test_public_names_are_the_real_objects() -> None:
    """Every name in ``__all__`` resolves to the object it promises, not merely to something."""
    import importlib.metadata
    import inspect

    from modelkeep import errors, manager, metadata, registry

    assert modelkeep.ModelPersistence is registry.ModelPersistence
    assert modelkeep.ModelPersistenceManager is manager.ModelPersistenceManager
    for name in ("ModelMetadata", "ArtifactInfo", "ModelSummary"):
        assert getattr(modelkeep, name) is getattr(metadata, name)
    for name in modelkeep.__all__:
        value = getattr(modelkeep, name)
        if name.endswith("Error"):
            assert value is getattr(errors, name) and issubclass(value, errors.ModelKeepError)
        elif name != "__version__":
            assert inspect.isclass(value), name
    assert set(modelkeep.__all__) >= {"ModelPersistence", "ModelPersistenceManager", "VersionExistsError"}
    # The version is set in one place, and the installed metadata agrees with it.
    assert modelkeep.__version__ == importlib.metadata.version("modelkeep")
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        modelkeep.NoSuchThing  # noqa: B018


def test_context_manager_and_repr(tmp_path: Path) -> None:
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save({"a": 1}, "m")
        assert "models" in repr(p)
    assert (tmp_path / "models" / "registry.db").exists()  # embedded default: SQLite beside the models


# --------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------


def test_save_allocates_patch_versions_from_1_0_0(persistence: ModelPersistence, classifier: Any) -> None:
    paths = [persistence.save(classifier, "clf") for _ in range(3)]
    assert [p.parent.name for p in paths] == ["1.0.0", "1.0.1", "1.0.2"]
    assert persistence.list_versions("clf") == ["1.0.0", "1.0.1", "1.0.2"]


@pytest.mark.local_files("checks the seed layout of files on the local disk")
def test_save_returns_existing_path_in_seed_layout(persistence: ModelPersistence, classifier: Any) -> None:
    path = persistence.save(classifier, "clf", "2.1.0", accuracy=0.9)
    root = Path(persistence.models_dir)
    assert isinstance(path, Path)
    assert path == root / "clf" / "2.1.0" / "clf_v2.1.0.joblib"
    assert path.is_file() and path.stat().st_size > 0
    sidecar = root / "clf" / "2.1.0" / "clf_v2.1.0_metadata.json"
    assert sidecar.is_file()
    assert _files(root / "clf") == {"2.1.0/clf_v2.1.0.joblib", "2.1.0/clf_v2.1.0_metadata.json"}


@pytest.mark.local_files("reads the sidecar file from the local disk")
def test_sidecar_json_matches_get_metadata(persistence: ModelPersistence, classifier: Any) -> None:
    persistence.save(classifier, "clf", "1.0.0", accuracy=0.95, features=["a", "b"])
    sidecar = json.loads(_sidecar_path(persistence, "clf", "1.0.0").read_text())
    meta = persistence.get_metadata("clf", "1.0.0")
    assert meta is not None
    assert sidecar == meta.to_dict()
    assert sidecar["metadata"]["accuracy"] == 0.95
    assert sidecar["artifact"]["sha256"] == meta.artifact.sha256  # type: ignore[union-attr]


@pytest.mark.local_files("stats the artifact file on the local disk")
def test_save_version_returns_full_record(persistence: ModelPersistence, classifier: Any) -> None:
    rec = persistence.save_version(classifier, "clf", metadata={"accuracy": 0.9})
    assert isinstance(rec, ModelMetadata)
    assert (rec.model_name, rec.version, rec.model_type) == ("clf", "1.0.0", "LogisticRegression")
    assert rec.artifact is not None and rec.artifact.format == "joblib" and len(rec.artifact.sha256) == 64
    assert rec.artifact.size == (Path(persistence.models_dir) / rec.artifact.key).stat().st_size
    assert rec.created_at.endswith("+00:00") and rec.updated_at == rec.created_at
    assert persistence.get_version("clf", "1.0.0").to_dict() == rec.to_dict()


def test_save_records_custom_metadata_and_model_params(persistence: ModelPersistence, classifier: Any) -> None:
    persistence.save(
        classifier,
        "clf",
        "1.0.0",
        accuracy=np.float64(0.95),
        training_samples=np.int64(150),
        features=["f1", "f2"],
        hyperparameters={"C": 1.0},
    )
    meta = persistence.get_metadata("clf", "1.0.0")
    assert meta is not None
    assert meta.model_type == "LogisticRegression"
    assert meta.metadata["accuracy"] == 0.95 and type(meta.metadata["accuracy"]) is float
    assert meta.metadata["training_samples"] == 150 and type(meta.metadata["training_samples"]) is int
    assert meta.metadata["features"] == ["f1", "f2"]
    assert meta.metadata["hyperparameters"] == {"C": 1.0}
    params = meta.metadata["model_params"]
    assert params["C"] == 1.0 and params["max_iter"] == 500
    assert set(params) == set(classifier.get_params(deep=False))


def test_no_model_params_without_get_params(persistence: ModelPersistence) -> None:
    persistence.save({"weights": [1, 2]}, "plain", "1.0.0", note="x")
    meta = persistence.get_metadata("plain", "1.0.0")
    assert meta is not None
    assert meta.metadata == {"note": "x"}
    assert meta.model_type == "dict"


def test_explicit_version_existing_raises_and_original_stays(persistence: ModelPersistence, classifier: Any) -> None:
    path = persistence.save({"v": "original"}, "m", "1.0.0", accuracy=0.5)
    before_bytes = path.read_bytes()
    before = persistence.get_version("m", "1.0.0").to_dict()
    with pytest.raises(VersionExistsError, match="already exists") as info:
        persistence.save({"v": "replacement"}, "m", "1.0.0", accuracy=0.9)
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, ModelKeepError)
    assert path.read_bytes() == before_bytes
    assert persistence.get_version("m", "1.0.0").to_dict() == before
    assert persistence.load("m", "1.0.0") == {"v": "original"}
    assert persistence.list_versions("m") == ["1.0.0"]


@pytest.mark.local_files("reads the sidecar file from the local disk")
def test_overwrite_replaces_version_and_keeps_created_at(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "m", "1.0.0", accuracy=0.5)
    first = persistence.get_version("m", "1.0.0")
    time.sleep(0.01)
    path = persistence.save({"v": 2}, "m", "1.0.0", overwrite=True, accuracy=0.9)
    second = persistence.get_version("m", "1.0.0")
    assert path.exists()
    assert persistence.load("m", "1.0.0") == {"v": 2}
    assert second.metadata == {"accuracy": 0.9}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert second.artifact.sha256 != first.artifact.sha256  # type: ignore[union-attr]
    assert persistence.list_versions("m") == ["1.0.0"]
    assert json.loads(_sidecar_path(persistence, "m", "1.0.0").read_text()) == second.to_dict()


@pytest.mark.local_files("looks for the new artifact on the local disk")
def test_overwrite_in_another_format_removes_old_artifact(persistence: ModelPersistence) -> None:
    old = persistence.save({"v": 1}, "m", "1.0.0")
    rec = persistence.save_version({"v": 2}, "m", "1.0.0", overwrite=True, serialization_format="pickle")
    new = Path(persistence.models_dir) / rec.artifact.key  # type: ignore[union-attr]
    assert new.name == "m_v1.0.0.pkl.gz"
    assert new.exists() and not old.exists()
    assert persistence.load("m") == {"v": 2}


@pytest.mark.local_files("lists the registry's files on the local disk")
def test_unstorable_metadata_raises_and_writes_nothing(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "m", "1.0.0")
    before = _files(Path(persistence.models_dir))
    with pytest.raises(MetadataError, match="extra") as info:
        persistence.save({"v": 2}, "m", extra=object())
    assert isinstance(info.value, ValueError)
    with pytest.raises(MetadataError):
        persistence.save({"v": 2}, "m", blob=b"bytes")
    assert _files(Path(persistence.models_dir)) == before
    assert persistence.list_versions("m") == ["1.0.0"]


@pytest.mark.local_files("lists the registry's files on the local disk")
@pytest.mark.parametrize("fmt", ["joblib", "pickle"])
def test_unpicklable_model_raises_serialization_error(persistence: ModelPersistence, fmt: str, tmp_path: Path) -> None:
    persistence.save({"v": 1}, "m", "1.0.0")
    before = _files(Path(persistence.models_dir))
    with pytest.raises(SerializationError) as info:
        persistence.save_version(lambda x: x, "m", serialization_format=fmt)
    assert isinstance(info.value, TypeError)
    with open(tmp_path / "f.txt", "w") as handle, pytest.raises(TypeError):
        persistence.save_version({"file": handle}, "m", serialization_format=fmt)
    assert _files(Path(persistence.models_dir)) == before
    assert persistence.list_versions("m") == ["1.0.0"]
    assert persistence.save({"v": 3}, "m").parent.name == "1.0.1"  # no version was burnt


# --------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------


def test_load_latest_explicit_and_with_metadata(persistence: ModelPersistence, iris_data: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    models = [LogisticRegression(C=c, max_iter=500).fit(X, y) for c in (0.01, 1.0)]
    for m in models:
        persistence.save(m, "clf", accuracy=float(m.score(X, y)))
    latest = persistence.load("clf")
    np.testing.assert_array_equal(latest.predict_proba(X), models[1].predict_proba(X))
    first = persistence.load("clf", "1.0.0")
    np.testing.assert_array_equal(first.predict_proba(X), models[0].predict_proba(X))
    loaded, meta = persistence.load("clf", "1.0.0", return_metadata=True)
    assert isinstance(meta, ModelMetadata)
    assert (meta.model_name, meta.version) == ("clf", "1.0.0")
    assert meta.metadata["accuracy"] == pytest.approx(models[0].score(X, y))
    np.testing.assert_array_equal(loaded.coef_, models[0].coef_)


def test_load_unknown_model(persistence: ModelPersistence) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        persistence.load("x")
    assert str(info.value) == "No versions found for model 'x'"
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError, match="No versions found for model 'x'"):
        persistence.load("x", "1.0.0")


def test_load_unknown_version(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "m", "1.0.0")
    with pytest.raises(VersionNotFoundError, match=r"2\.0\.0") as info:
        persistence.load("m", "2.0.0")
    assert isinstance(info.value, ModelNotFoundError) and isinstance(info.value, KeyError)


def test_load_missing_artifact_file(persistence: ModelPersistence) -> None:
    path = persistence.save({"v": 1}, "m", "1.0.0")
    path.unlink()
    with pytest.raises(ArtifactNotFoundError, match="Model file not found") as info:
        persistence.load("m")
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("where", [0, -1, "middle"])
def test_load_detects_a_flipped_byte(persistence: ModelPersistence, classifier: Any, where: int | str) -> None:
    path = persistence.save(classifier, "clf", "1.0.0")
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if where == "middle" else int(where)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256") as info:
        persistence.load("clf", "1.0.0")
    assert isinstance(info.value, ValueError)


def test_load_mmap_uncompressed_joblib(tmp_path: Path) -> None:
    with ModelPersistence(models_dir=tmp_path / "models", compress=False) as p:
        arrays = {"w": np.arange(10_000, dtype=np.float64)}
        p.save(arrays, "arr")
        loaded = p.load("arr", mmap_mode="r")
        assert isinstance(loaded["w"], np.memmap)
        np.testing.assert_array_equal(loaded["w"], arrays["w"])


# --------------------------------------------------------------------------------------
# queries
# --------------------------------------------------------------------------------------


def test_list_models_sorted_and_list_versions(persistence: ModelPersistence) -> None:
    assert persistence.list_models() == []
    for name in ["zeta", "alpha", "Mid"]:
        persistence.save({"n": name}, name)
    persistence.save({"n": "alpha"}, "alpha")
    assert persistence.list_models() == sorted(["zeta", "alpha", "Mid"])
    assert persistence.list_versions("alpha") == ["1.0.0", "1.0.1"]
    assert persistence.list_versions("unknown") == []


def test_get_metadata_none_when_absent(persistence: ModelPersistence) -> None:
    assert persistence.get_metadata("ghost") is None
    assert persistence.get_metadata("ghost", "1.0.0") is None
    persistence.save({"v": 1}, "m", "1.0.0", accuracy=0.1)
    persistence.save({"v": 2}, "m", "1.1.0", accuracy=0.2)
    assert persistence.get_metadata("m", "9.9.9") is None
    latest = persistence.get_metadata("m")
    assert latest is not None and latest.version == "1.1.0" and latest.metadata["accuracy"] == 0.2


def test_get_version_raises_when_absent(persistence: ModelPersistence) -> None:
    with pytest.raises(ModelNotFoundError, match="No versions found for model 'ghost'"):
        persistence.get_version("ghost")
    persistence.save({"v": 1}, "m", "1.0.0")
    with pytest.raises(VersionNotFoundError):
        persistence.get_version("m", "1.0.1")
    assert persistence.get_version("m").version == "1.0.0"
    assert persistence.resolve_version("m") == "1.0.0"


def test_list_version_records(persistence: ModelPersistence) -> None:
    with pytest.raises(ModelNotFoundError, match="No versions found for model 'm'"):
        persistence.list_version_records("m")
    for v in ["2.0.0", "1.0.0", "1.5.0"]:
        persistence.save({"v": v}, "m", v, tag=v)
    records = persistence.list_version_records("m")
    assert [r.version for r in records] == ["1.0.0", "1.5.0", "2.0.0"]
    assert [r.metadata["tag"] for r in records] == ["1.0.0", "1.5.0", "2.0.0"]
    assert all(isinstance(r, ModelMetadata) and r.model_name == "m" for r in records)


def test_model_summaries(persistence: ModelPersistence) -> None:
    assert persistence.model_summaries() == []
    for v in ["1.0.0", "1.10.0", "1.9.0"]:
        persistence.save({"v": v}, "b", v)
    persistence.save({"v": 0}, "a", "custom")
    summaries = persistence.model_summaries()
    assert all(isinstance(s, ModelSummary) for s in summaries)
    assert [(s.name, s.version_count, s.latest_version) for s in summaries] == [("a", 1, "custom"), ("b", 3, "1.10.0")]
    newest_b = max(r.updated_at for r in persistence.list_version_records("b"))
    assert summaries[1].updated_at == newest_b
    assert summaries[0].to_dict()["latest_version"] == "custom"


# --------------------------------------------------------------------------------------
# compare_versions
# --------------------------------------------------------------------------------------


def test_compare_versions_columns_and_rows(persistence: ModelPersistence, classifier: Any) -> None:
    persistence.save(classifier, "clf", "1.0.0", accuracy=0.9, f1_score=0.8, dataset="v1", tags=["a"])
    persistence.save(classifier, "clf", "1.1.0", accuracy=0.95, f1_score=0.85, dataset="v2", extra={"k": 1})
    df = persistence.compare_versions("clf")
    assert list(df.columns[:3]) == ["version", "created_at", "model_type"]
    assert sorted(df.columns[3:]) == ["accuracy", "dataset", "f1_score"]  # nested fields are left out
    assert list(df["version"]) == ["1.0.0", "1.1.0"]
    assert list(df["accuracy"]) == [0.9, 0.95]
    assert list(df["model_type"]) == ["LogisticRegression"] * 2
    assert list(df["created_at"]) == [r.created_at for r in persistence.list_version_records("clf")]
    assert "model_params" not in df.columns


def test_compare_versions_subset_and_missing_metric(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "m", "1.0.0", accuracy=0.5)
    persistence.save({"v": 2}, "m", "1.1.0", accuracy=0.6, recall=0.7)
    persistence.save({"v": 3}, "m", "2.0.0", accuracy=0.8)
    df = persistence.compare_versions("m", versions=["2.0.0", "1.1.0"])
    assert list(df["version"]) == ["2.0.0", "1.1.0"]
    assert list(df["accuracy"]) == [0.8, 0.6]
    assert math.isnan(df.loc[df["version"] == "2.0.0", "recall"].iloc[0])
    assert df.loc[df["version"] == "1.1.0", "recall"].iloc[0] == 0.7
    full = persistence.compare_versions("m")
    assert full["recall"].isna().tolist() == [True, False, True]


def test_compare_versions_unknown(persistence: ModelPersistence) -> None:
    with pytest.raises(ModelNotFoundError):
        persistence.compare_versions("ghost")
    persistence.save({"v": 1}, "m", "1.0.0")
    with pytest.raises(VersionNotFoundError):
        persistence.compare_versions("m", versions=["1.0.0", "9.9.9"])


# --------------------------------------------------------------------------------------
# delete
# --------------------------------------------------------------------------------------


@pytest.mark.local_files("reads the sidecar file from the local disk")
def test_delete_then_purge_removes_files_and_entry_only_for_that_version(persistence: ModelPersistence) -> None:
    keep = persistence.save({"v": 1}, "m", "1.0.0")
    gone = persistence.save({"v": 2}, "m", "1.1.0")
    other = persistence.save({"v": 3}, "other", "1.1.0")
    persistence.delete("m", "1.1.0")
    assert gone.exists(), "a delete only moves the version to the trash"
    assert persistence.purge("m", "1.1.0") == [("m", "1.1.0")]
    assert not gone.exists()
    assert not gone.parent.exists()  # the version folder, sidecar included, is gone
    assert persistence.list_versions("m") == ["1.0.0"]
    assert persistence.get_metadata("m", "1.1.0") is None
    with pytest.raises(VersionNotFoundError):
        persistence.load("m", "1.1.0")
    assert keep.exists() and _sidecar_path(persistence, "m", "1.0.0").exists()
    assert persistence.load("m") == {"v": 1}
    assert other.exists() and persistence.load("other") == {"v": 3}


@pytest.mark.local_files("checks the model's folder on the local disk")
def test_delete_last_version_removes_model(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "m", "1.0.0")
    persistence.save({"v": 2}, "keep", "1.0.0")
    persistence.delete("m", "1.0.0")
    assert persistence.list_models() == ["keep"]
    assert persistence.list_versions("m") == []
    persistence.purge("m")
    assert not (Path(persistence.models_dir) / "m").exists()
    assert persistence.save({"v": 3}, "m").parent.name == "1.0.0"


def test_delete_same_bytes_twice_keeps_the_other_copy(persistence: ModelPersistence) -> None:
    a = persistence.save({"same": 1}, "m", "1.0.0")
    b = persistence.save({"same": 1}, "m", "1.0.1")
    persistence.delete("m", "1.0.0")
    persistence.purge("m", "1.0.0")
    assert not a.exists() and b.exists()
    assert persistence.load("m", "1.0.1") == {"same": 1}


def test_delete_unknown_raises_key_error(persistence: ModelPersistence) -> None:
    with pytest.raises(ModelNotFoundError, match="No versions found for model 'ghost'") as info:
        persistence.delete("ghost", "1.0.0")
    assert isinstance(info.value, KeyError)
    persistence.save({"v": 1}, "m", "1.0.0")
    with pytest.raises(VersionNotFoundError) as info2:
        persistence.delete("m", "2.0.0")
    assert isinstance(info2.value, KeyError)
    assert persistence.list_versions("m") == ["1.0.0"]


# --------------------------------------------------------------------------------------
# import_file / export_file
# --------------------------------------------------------------------------------------


def _write(kind: str, obj: Any, path: Path) -> Path:
    if kind == "pkl":
        path.write_bytes(pickle.dumps(obj))
    elif kind == "pkl.gz":
        with gzip.open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        joblib.dump(obj, path, compress=3)
    return path


def _read(kind: str, path: Path) -> Any:
    if kind == "pkl":
        return pickle.loads(path.read_bytes())
    if kind == "pkl.gz":
        with gzip.open(path, "rb") as f:
            return pickle.load(f)
    return joblib.load(path)


@pytest.mark.parametrize("kind", ["pkl", "joblib", "pkl.gz"])
def test_import_file(persistence: ModelPersistence, classifier: Any, iris_data: Any, tmp_path: Path, kind: str) -> None:
    src = _write(kind, classifier, tmp_path / f"model.{kind}")
    rec = persistence.import_file(src, "imported", metadata={"source": kind})
    assert rec.version == "1.0.0" and rec.model_type == "LogisticRegression"
    assert rec.metadata["source"] == kind and "model_params" in rec.metadata
    X, _ = iris_data
    np.testing.assert_array_equal(persistence.load("imported").predict_proba(X), classifier.predict_proba(X))


def test_import_file_errors(persistence: ModelPersistence, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        persistence.import_file(tmp_path / "missing.pkl", "m")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle at all")
    with pytest.raises(SerializationError) as info:
        persistence.import_file(junk, "m")
    assert isinstance(info.value, TypeError)
    assert persistence.list_models() == []


class _Sneaky:
    """A pickle that would call ``os.getcwd`` (harmless) on load: a stand-in for an exploit."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        import os

        return (os.getcwd, ())


def test_import_refuses_unsafe_pickle(persistence: ModelPersistence, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(_Sneaky()))
    with pytest.raises(UnsafeModelError, match="getcwd") as info:
        persistence.import_file(bad, "m")
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, IntegrityError)
    assert persistence.list_models() == []


@pytest.mark.parametrize("kind", ["pkl", "joblib", "pkl.gz"])
def test_export_file(persistence: ModelPersistence, classifier: Any, iris_data: Any, tmp_path: Path, kind: str) -> None:
    persistence.save(classifier, "clf", "1.0.0")
    out = persistence.export_file("clf", "1.0.0", tmp_path / "out" / f"exported.{kind}")
    assert out == tmp_path / "out" / f"exported.{kind}" and out.is_file()
    if kind == "pkl.gz":
        assert out.read_bytes()[:2] == b"\x1f\x8b"
    elif kind == "pkl":
        assert out.read_bytes()[:1] == b"\x80"
    X, _ = iris_data
    np.testing.assert_array_equal(_read(kind, out).predict_proba(X), classifier.predict_proba(X))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind


def test_export_file_refuses_to_overwrite(persistence: ModelPersistence, tmp_path: Path) -> None:
    persistence.save({"v": 1}, "m", "1.0.0")
    persistence.save({"v": 2}, "m", "1.0.1")
    out = tmp_path / "m.pkl"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError) as info:
        persistence.export_file("m", "1.0.0", out)
    assert isinstance(info.value, ModelKeepError)
    assert out.read_bytes() == b"precious"
    persistence.export_file("m", None, out, force=True)  # None: latest
    assert pickle.loads(out.read_bytes()) == {"v": 2}


def test_export_file_unknown_suffix_or_version(persistence: ModelPersistence, tmp_path: Path) -> None:
    persistence.save({"v": 1}, "m", "1.0.0")
    with pytest.raises(ConfigError, match=r"\.joblib"):
        persistence.export_file("m", "1.0.0", tmp_path / "m.txt")
    with pytest.raises(VersionNotFoundError):
        persistence.export_file("m", "3.0.0", tmp_path / "m.pkl")
    assert not (tmp_path / "m.pkl").exists()


# --------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------


@pytest.mark.local_files("reads the sidecar file from the local disk")
def test_environment_recorded_at_save(persistence: ModelPersistence, classifier: Any) -> None:
    import sklearn

    persistence.save(classifier, "clf", "1.0.0")
    env = persistence.get_version("clf", "1.0.0").environment
    assert env["python"] == platform.python_version()
    assert env["platform"] == f"{platform.system()}-{platform.machine()}"
    assert env["packages"]["scikit-learn"] == sklearn.__version__
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["joblib"] == joblib.__version__
    assert json.loads(_sidecar_path(persistence, "clf", "1.0.0").read_text())["environment"] == env


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("modelkeep") and r.levelno == logging.WARNING]


def test_no_environment_warning_in_same_environment(
    persistence: ModelPersistence, classifier: Any, caplog: pytest.LogCaptureFixture
) -> None:
    persistence.save(classifier, "clf", "1.0.0")
    with caplog.at_level(logging.INFO, logger="modelkeep"):
        persistence.load("clf")
    assert _warnings(caplog) == []


def test_environment_warning_when_numpy_differs(
    persistence: ModelPersistence, classifier: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    persistence.save(classifier, "clf", "1.0.0")
    real = np.__version__
    monkeypatch.setattr(np, "__version__", "0.0.1-fake")
    with caplog.at_level(logging.INFO, logger="modelkeep"):
        model = persistence.load("clf")
    assert model is not None
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "clf" in message and "1.0.0" in message
    assert f"numpy {real} -> 0.0.1-fake" in message
    assert "scikit-learn" not in message and "python" not in message


def test_no_environment_warning_for_installed_but_not_imported_package(
    persistence: ModelPersistence, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model saved while scikit-learn was imported, loaded in a process that has not imported
    it (yet): scikit-learn is still installed at the same version, so nothing differs."""
    import sys

    import sklearn

    persistence.save({"w": np.arange(3)}, "arrays", "1.0.0")
    assert persistence.get_version("arrays").environment["packages"]["scikit-learn"] == sklearn.__version__
    monkeypatch.delitem(sys.modules, "sklearn")  # as in a fresh process that never imported it
    with caplog.at_level(logging.INFO, logger="modelkeep"):
        persistence.load("arrays")
    assert [r.getMessage() for r in _warnings(caplog)] == []


def test_environment_warning_lists_every_difference_once(
    persistence: ModelPersistence, classifier: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    persistence.save(classifier, "clf", "1.0.0")
    real_python = platform.python_version()
    monkeypatch.setattr(np, "__version__", "0.0.1-fake")
    monkeypatch.setattr(modelkeep.environment.platform, "python_version", lambda: "3.99.0")
    with caplog.at_level(logging.INFO, logger="modelkeep"):
        persistence.load("clf", return_metadata=True)
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"python {real_python} -> 3.99.0" in message
    assert "numpy" in message


# --------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("modelkeep") and r.levelno == logging.INFO]


def test_one_info_line_per_save_load_delete(
    persistence: ModelPersistence, classifier: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelkeep")
    persistence.save(classifier, "clf", "3.2.1")
    size = persistence.get_version("clf", "3.2.1").artifact.size  # type: ignore[union-attr]
    saves = _infos(caplog)
    caplog.clear()
    persistence.load("clf", "3.2.1")
    loads = _infos(caplog)
    caplog.clear()
    persistence.delete("clf", "3.2.1")
    trashes = _infos(caplog)
    caplog.clear()
    persistence.purge("clf", "3.2.1")
    deletes = _infos(caplog)
    assert len(trashes) == 1 and "clf" in trashes[0] and "3.2.1" in trashes[0] and "trash" in trashes[0]
    for lines in (saves, loads, deletes):
        assert len(lines) == 1, lines
        line = lines[0]
        assert "clf" in line and "3.2.1" in line and f"{size} bytes" in line and " ms" in line
    assert "save" in saves[0] and "load" in loads[0] and "purged" in deletes[0]


def test_failed_operations_log_no_info_line(persistence: ModelPersistence, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelkeep")
    with pytest.raises(ModelNotFoundError):
        persistence.load("ghost")
    with pytest.raises(ModelNotFoundError):
        persistence.delete("ghost", "1.0.0")
    assert _infos(caplog) == []


# --------------------------------------------------------------------------------------
# errors are catchable as ModelKeepError and as the matching built-in
# --------------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    pairs = {
        ModelNotFoundError: KeyError,
        VersionNotFoundError: KeyError,
        ArtifactNotFoundError: FileNotFoundError,
        VersionExistsError: FileExistsError,
        InvalidNameError: ValueError,
        MetadataError: ValueError,
        ConfigError: ValueError,
        IntegrityError: ValueError,
        SignatureError: ValueError,
        UnsafeModelError: pickle.UnpicklingError,
        SerializationError: TypeError,
        StorageError: OSError,
        BackendUnavailableError: ImportError,
    }
    for err, builtin in pairs.items():
        assert issubclass(err, ModelKeepError) and issubclass(err, builtin), err
    # and every other class of the hierarchy is also some built-in error besides Exception
    import modelkeep.errors as errors_module

    classes = [c for c in vars(errors_module).values() if isinstance(c, type) and issubclass(c, ModelKeepError)]
    for err in classes:
        if err is not ModelKeepError:
            generic = (Exception, BaseException, object)
            assert any(b.__module__ == "builtins" and b not in generic for b in err.__mro__[1:]), err
    assert issubclass(VersionNotFoundError, ModelNotFoundError)
    assert issubclass(SignatureError, IntegrityError)
    # KeyError.__str__ would quote the message; ours stay readable
    assert str(ModelNotFoundError("No versions found for model 'x'")) == "No versions found for model 'x'"


def test_config_errors_from_constructor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'joblib', 'pickle'") as info:
        ModelPersistence(models_dir=tmp_path / "m", serialization_format="xml")
    assert isinstance(info.value, ValueError) and "xml" in str(info.value)
    with pytest.raises(ValueError, match="gzip"):
        ModelPersistence(models_dir=tmp_path / "m", serialization_format="pickle", compress="lz4")
    with pytest.raises(ConfigError, match="1 to 9"):
        ModelPersistence(models_dir=tmp_path / "m", compress=("zlib", 12))


@pytest.mark.local_files("blocks a folder on the local disk")
def test_storage_error_when_the_disk_refuses(persistence: ModelPersistence) -> None:
    root = Path(persistence.models_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "blocked").write_text("a file where the model's folder should go")
    with pytest.raises(StorageError) as info:
        persistence.save({"v": 1}, "blocked", "1.0.0")
    assert isinstance(info.value, OSError) and isinstance(info.value, ModelKeepError)
    assert persistence.list_models() == []
    staging = root / ".tmp"
    assert (list(staging.iterdir()) if staging.exists() else []) == []  # the staged bytes were discarded


def test_backend_unavailable_for_missing_driver(tmp_path: Path) -> None:
    with pytest.raises(ImportError) as info:
        ModelPersistence(models_dir=tmp_path / "m", registry_url="mysql://user@localhost/db")
    assert isinstance(info.value, BackendUnavailableError)


def test_signature_errors(local_persistence: ModelPersistence, tmp_path: Path) -> None:
    rec = local_persistence.save_version({"v": 1}, "unsigned", "1.0.0")
    local_persistence.index.put(dataclasses.replace(rec, signature=None))  # as saved by 0.1 without a key
    with ModelPersistence(models_dir=tmp_path / "models", signing_key="k1") as signer:
        signer.save({"v": 2}, "signed", "1.0.0")
        assert signer.load("signed") == {"v": 2}
        with pytest.raises(SignatureError, match="not signed"):
            signer.load("unsigned")
    with ModelPersistence(models_dir=tmp_path / "models", signing_key="k2") as other, pytest.raises(ValueError):
        other.load("signed")


@pytest.mark.parametrize(
    "layout",
    [
        {"models_dir": "afile"},
        {"models_dir": "afile/sub"},
        {"models_dir": "models", "registry_path": "afile"},
    ],
    ids=["models-dir-is-a-file", "models-dir-under-a-file", "registry-path-is-a-file"],
)
def test_unusable_folders_raise_storage_error(tmp_path: Path, layout: dict[str, str]) -> None:
    """A folder that cannot be created is a storage failure, catchable as ModelKeepError
    (raised by the save that would create it: opening a registry creates nothing)."""
    (tmp_path / "afile").write_text("not a folder")
    kwargs = {key: tmp_path / value for key, value in layout.items()}
    with pytest.raises(StorageError) as info, ModelPersistence(**kwargs) as p:  # type: ignore[arg-type]
        p.save({"a": 1}, "m")
    assert isinstance(info.value, OSError)


def test_create_false_needs_an_existing_registry(tmp_path: Path) -> None:
    with pytest.raises(modelkeep.RegistryNotFoundError) as info:
        ModelPersistence(models_dir=tmp_path / "nothing", create=False)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ModelKeepError)
    assert not (tmp_path / "nothing").exists()
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.save({"a": 1}, "m")
    with ModelPersistence(models_dir=tmp_path / "models", create=False) as p:
        assert p.load("m") == {"a": 1}
