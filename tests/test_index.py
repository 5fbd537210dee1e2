"""The index conformance suite: runs unchanged on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from modelkeep import ModelMetadata, ModelNotFoundError, VersionExistsError, VersionNotFoundError
from modelkeep.index import SqlIndex
from modelkeep.metadata import ArtifactInfo

from .conftest import IndexTarget


def _record(name: str, version: str, sha: str = "0" * 64) -> ModelMetadata:
    return ModelMetadata(
        model_name=name,
        model_type="Dummy",
        version=version,
        created_at="2024-01-01T00:00:00+00:00",
        updated_at="2024-01-01T00:00:00+00:00",
        metadata={"accuracy": 0.5},
        artifact=ArtifactInfo(f"{name}/{version}/{name}_v{version}.joblib", "joblib", None, 10, sha),
    )


@pytest.fixture
def index(index_target: IndexTarget):  # type: ignore[no-untyped-def]
    idx = SqlIndex(index_target.url, schema=index_target.schema)
    yield idx
    idx.close()


def _add(index: SqlIndex, name: str, version: str | None) -> str:
    with index.reserve(name, version) as slot:
        slot.put(_record(name, slot.version))
    return slot.version


def test_auto_versions_count_up_patch(index: SqlIndex) -> None:
    assert [_add(index, "m", None) for _ in range(3)] == ["1.0.0", "1.0.1", "1.0.2"]


def test_auto_version_follows_highest_semantic_version(index: SqlIndex) -> None:
    for v in ["1.9.0", "1.10.0", "alpha-1", "1.10.0-rc1"]:
        _add(index, "m", v)
    assert _add(index, "m", None) == "1.10.1"


def test_auto_version_keeps_v_prefix(index: SqlIndex) -> None:
    _add(index, "m", "v2.3.4")
    assert _add(index, "m", None) == "v2.3.5"


def test_list_versions_is_in_version_order(index: SqlIndex) -> None:
    for v in ["1.10.0", "1.9.0", "2.0.0-rc1", "2.0.0", "production-v1", "1.0.0"]:
        _add(index, "m", v)
    assert index.list_versions("m") == ["production-v1", "1.0.0", "1.9.0", "1.10.0", "2.0.0-rc1", "2.0.0"]


def test_latest_is_highest_parsed_version(index: SqlIndex) -> None:
    for v in ["2.0.0", "10.0.0-alpha", "1.5.0", "custom"]:
        _add(index, "m", v)
    assert index.resolve("m").version == "10.0.0-alpha"


def test_latest_without_parsed_versions_is_most_recent(index: SqlIndex) -> None:
    for v in ["zeta", "alpha", "production-v1"]:
        _add(index, "m", v)
    assert index.resolve("m").version == "production-v1"


def test_duplicate_version_is_refused_and_original_kept(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    with pytest.raises(VersionExistsError), index.reserve("m", "1.0.0") as slot:
        slot.put(_record("m", "1.0.0", sha="f" * 64))
    got = index.get("m", "1.0.0")
    assert got is not None and got.artifact is not None and got.artifact.sha256 == "0" * 64


def test_overwrite_replaces_record(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    with index.reserve("m", "1.0.0", overwrite=True) as slot:
        assert slot.previous is not None
        slot.put(_record("m", "1.0.0", sha="f" * 64))
    got = index.get("m", "1.0.0")
    assert got is not None and got.artifact is not None and got.artifact.sha256 == "f" * 64
    assert index.list_versions("m") == ["1.0.0"]


def test_exception_inside_reserve_rolls_back(index: SqlIndex) -> None:
    with pytest.raises(RuntimeError, match="boom"), index.reserve("m", None) as slot:
        slot.put(_record("m", slot.version))
        raise RuntimeError("boom")
    assert index.list_versions("m") == []


def test_missing_model_and_version_errors(index: SqlIndex) -> None:
    with pytest.raises(ModelNotFoundError, match="No versions found for model 'ghost'"):
        index.resolve("ghost")
    _add(index, "m", "1.0.0")
    with pytest.raises(VersionNotFoundError, match=r"no version .9\.9\.9."):
        index.resolve("m", "9.9.9")
    with pytest.raises(KeyError):
        index.delete("m", "9.9.9")


def test_summaries_and_models(index: SqlIndex) -> None:
    for v in ["1.0.0", "1.2.0", "1.1.0"]:
        _add(index, "b", v)
    _add(index, "a", "x")
    assert index.list_models() == ["a", "b"]
    summary = {s.name: (s.version_count, s.latest_version) for s in index.summaries()}
    assert summary == {"a": (1, "x"), "b": (3, "1.2.0")}


def test_delete_removes_only_that_version(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    _add(index, "m", "1.0.1")
    removed = index.delete("m", "1.0.0")
    assert removed.version == "1.0.0"
    assert index.list_versions("m") == ["1.0.1"]


def test_record_round_trips_through_index(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    got = index.get("m", "1.0.0")
    assert got == _record("m", "1.0.0")


def test_artifact_refs_are_counted(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    assert index.count_artifact_refs("m/1.0.0/m_v1.0.0.joblib") == 1
    assert index.count_artifact_refs("nope") == 0
