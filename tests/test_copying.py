"""copy_registry: local to team (PostgreSQL + S3) and back, byte for byte, verified."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence
from modelkeep.copying import CopyReport, copy_registry
from modelkeep.errors import IntegrityError, ModelNotFoundError, VersionExistsError
from tests.s3_server import S3Bucket

pytestmark = [pytest.mark.postgres, pytest.mark.s3]

PG_URL = os.environ.get("MODELKEEP_TEST_POSTGRES_URL")


@pytest.fixture
def team(s3_bucket: S3Bucket, pg_schema: str) -> Iterator[ModelPersistence]:
    """An empty team registry: PostgreSQL (private schema) + S3."""
    assert PG_URL
    p = ModelPersistence(
        models_dir=s3_bucket.url(),
        registry_url=PG_URL,
        storage_options=s3_bucket.storage_options,
        index_schema=pg_schema,
    )
    p.ensure_registry()
    yield p
    p.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[ModelPersistence]:
    with ModelPersistence(models_dir=tmp_path / "local") as p:
        p.ensure_registry()
        yield p


def fill(p: ModelPersistence, classifier: Any) -> None:
    p.save(classifier, "iris", accuracy=0.91)
    p.save(classifier, "iris", accuracy=0.95, dataset="v2")
    p.save({"w": np.arange(1000)}, "lookup", version="2.0.0", compress=False)
    p.save_version({"w": np.arange(10)}, "lookup", "2.1.0", serialization_format="pickle")


def records(p: ModelPersistence) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r.model_name, r.version): r.to_dict() for m in p.list_models() for r in p.list_version_records(m)}


def test_local_to_team_copies_every_version_as_is(
    local: ModelPersistence, team: ModelPersistence, s3_bucket: S3Bucket, classifier: Any, iris_data: Any
) -> None:
    fill(local, classifier)
    seen: list[tuple[str, int | None, int]] = []

    @contextmanager
    def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        done = [0]
        yield lambda n: done.__setitem__(0, done[0] + n)
        seen.append((description, total, done[0]))

    report = copy_registry(local, team, progress=progress)
    assert isinstance(report, CopyReport)
    assert report.copied == [("iris", "1.0.0"), ("iris", "1.0.1"), ("lookup", "2.0.0"), ("lookup", "2.1.0")]
    assert report.skipped == [] and report.overwritten == []
    assert records(team) == records(local)  # versions, created_at, metadata, sha256, environment: identical
    assert report.bytes_copied == sum(r["artifact"]["size"] for r in records(local).values())
    assert [(d, t) for d, t, _ in seen] == [
        (f"copying {m} {v}", records(local)[m, v]["artifact"]["size"]) for m, v in report.copied
    ]
    assert all(total == done for _, total, done in seen)
    X, _ = iris_data
    assert (team.load("iris", "1.0.0").predict(X) == classifier.predict(X)).all()
    assert np.array_equal(team.load("lookup")["w"], np.arange(10))
    assert team.list_versions("iris") == ["1.0.0", "1.0.1"] and team.get_version("iris").version == "1.0.1"
    keys = s3_bucket.object_keys()
    assert "models/iris/1.0.1/iris_v1.0.1_metadata.json" in keys
    assert not [k for k in keys if "/.tmp/" in k]
    assert str(report).startswith("copied 4 version(s)")


def test_copy_again_skips_what_is_there(local: ModelPersistence, team: ModelPersistence, classifier: Any) -> None:
    fill(local, classifier)
    copy_registry(local, team, models=["lookup"])
    assert team.list_models() == ["lookup"]
    again = copy_registry(local, team)
    assert again.skipped == [("lookup", "2.0.0"), ("lookup", "2.1.0")]
    assert again.copied == [("iris", "1.0.0"), ("iris", "1.0.1")]
    assert copy_registry(local, team).copied == []


def test_conflicts_are_refused_unless_overwrite(local: ModelPersistence, team: ModelPersistence) -> None:
    local.save({"a": 1}, "m", version="1.0.0")
    local.save({"a": 2}, "m", version="1.0.1")
    team.save({"a": "different"}, "m", version="1.0.0")
    with pytest.raises(VersionExistsError, match=r"m 1\.0\.0.*nothing was copied"):
        copy_registry(local, team)
    assert team.list_versions("m") == ["1.0.0"]  # not even the non-conflicting 1.0.1
    replaced_key = team.get_version("m", "1.0.0").artifact.key  # type: ignore[union-attr]
    report = copy_registry(local, team, overwrite=True)
    assert report.overwritten == [("m", "1.0.0")] and report.copied == [("m", "1.0.0"), ("m", "1.0.1")]
    assert team.load("m", "1.0.0") == {"a": 1}
    # the replacement went to a fresh revision key, and the replaced bytes were removed afterwards
    new_key = team.get_version("m", "1.0.0").artifact.key  # type: ignore[union-attr]
    assert new_key != replaced_key and new_key.startswith("m/1.0.0/m_v1.0.0.r") and new_key.endswith(".joblib")
    assert not team.store.exists(replaced_key)
    copied, original = records(team), records(local)
    copied["m", "1.0.0"]["artifact"].pop("key")
    original["m", "1.0.0"]["artifact"].pop("key")
    # the new key changed the manifest, so the per-user signature was renewed
    assert copied["m", "1.0.0"].pop("signature") != original["m", "1.0.0"].pop("signature")
    assert team.signature_status("m", "1.0.0").trusted
    assert copied == original  # digests, metadata and timestamps as in the source


def test_a_failed_copy_leaves_no_files_and_no_entry(
    local: ModelPersistence, team: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.save({"a": 1}, "m")

    def broken_verify(key: str, sha256: str) -> None:
        raise IntegrityError(f"simulated: {key} does not match")

    monkeypatch.setattr(team.store, "verify", broken_verify)
    with pytest.raises(IntegrityError, match="simulated"):
        copy_registry(local, team)
    assert team.list_models() == []
    assert team.store.list_keys() == []  # no artifact, no sidecar, no staged file


def test_corrupt_source_artifact_is_not_copied(local: ModelPersistence, team: ModelPersistence) -> None:
    local.save({"a": 1}, "good")
    rec = local.save_version({"a": 2}, "tampered")  # copied after "good"
    assert rec.artifact is not None
    path = local.store.local_path(rec.artifact.key)
    assert path is not None
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="integrity check failed"):
        copy_registry(local, team)
    assert team.list_models() == ["good"]
    assert team.get_metadata("tampered") is None
    assert not team.store.list_keys("tampered") and not team.store.list_keys(".tmp")


def test_unknown_model_is_an_error(local: ModelPersistence, team: ModelPersistence) -> None:
    with pytest.raises(ModelNotFoundError):
        copy_registry(local, team, models=["nope"])


def test_team_back_to_local_keeps_signatures(team: ModelPersistence, tmp_path: Path) -> None:
    signed_team = ModelPersistence(
        models_dir=team.store.url,
        registry_url=team.index.url,
        storage_options=team.store.fs.storage_options,
        index_schema=team.index.schema,
        signing_key="k3y",
    )
    signed_team.save({"secret": 42}, "signed")
    with ModelPersistence(models_dir=tmp_path / "back", signing_key="k3y") as back:
        report = copy_registry(signed_team, back)
        assert report.copied == [("signed", "1.0.0")]
        assert back.load("signed") == {"secret": 42}  # the signature verifies with the same key
        assert back.get_version("signed").signature == signed_team.get_version("signed").signature
    signed_team.close()


def test_native_format_blobs_are_copied(local: ModelPersistence, team: ModelPersistence) -> None:
    arrays = {"a": np.arange(200_000, dtype=np.float64), "b": np.ones((300, 300))}
    local.save_version(arrays, "nat", serialization_format="native")
    local.save_version(arrays, "nat", serialization_format="native")  # shares its blobs with 1.0.0
    copy_registry(local, team)
    assert len(team.store.list_keys(".blobs")) == len(local.store.list_keys(".blobs")) >= 2
    for version in ("1.0.0", "1.0.1"):
        loaded = team.load("nat", version)
        assert np.array_equal(loaded["a"], arrays["a"]) and np.array_equal(loaded["b"], arrays["b"])


def test_the_trash_comes_along_and_each_record_is_read_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trashed versions are copied and trashed again in the destination, and a copy reads each
    source record a few times, not once per model: finding the trashed ones used to parse every
    record of the registry for each model (quadratic: half of a 300-model copy's time)."""
    from modelkeep.metadata import ModelMetadata

    source = ModelPersistence(models_dir=tmp_path / "source")
    models = 30
    for m in range(models):
        for v in range(2):
            source.save({"m": m, "v": v}, f"model_{m}")
    for m in (3, 17):
        source.delete(f"model_{m}", "1.0.0")
    parsed = 0
    real = ModelMetadata.from_dict.__func__  # type: ignore[attr-defined]

    def counting(cls: type[ModelMetadata], data: Any) -> ModelMetadata:
        nonlocal parsed
        parsed += 1
        return real(cls, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(ModelMetadata, "from_dict", classmethod(counting))
    with source, ModelPersistence(models_dir=tmp_path / "dest") as dest:
        report = copy_registry(source, dest)
        monkeypatch.undo()

        assert len(report.copied) == 2 * models
        assert sorted((m, v) for m, v, _at in dest.list_trash()) == [("model_17", "1.0.0"), ("model_3", "1.0.0")]
        assert dest.list_versions("model_3") == ["1.0.1"]
    assert parsed <= 4 * 2 * models, f"{parsed} record parses for {2 * models} versions"
