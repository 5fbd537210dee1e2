"""The index conformance suite: runs unchanged on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from modelkeep import (
    AliasConflictError,
    AliasNotFoundError,
    InvalidNameError,
    ModelMetadata,
    ModelNotFoundError,
    VersionExistsError,
    VersionInUseError,
    VersionNotFoundError,
    VersionTrashedError,
)
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


# -- lifecycle: aliases, tags, descriptions, trash, history ------------------------------------


def _actions(index: SqlIndex, model: str | None = None) -> list[tuple[str, str | None]]:
    return [(h.action, h.version) for h in index.lifecycle.history(model)]


def test_save_and_overwrite_are_in_the_history(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    with index.reserve("m", "1.0.0", overwrite=True) as slot:
        slot.put(_record("m", "1.0.0", sha="f" * 64))
    entries = index.lifecycle.history("m")
    assert [(e.action, e.version) for e in entries] == [("save", "1.0.0"), ("overwrite", "1.0.0")]
    assert entries[1].before["sha256"] == "0" * 64 and entries[1].after["sha256"] == "f" * 64
    assert entries[0].actor and entries[0].at < entries[1].at


def test_actor_comes_from_modelkeep_user(index: SqlIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_USER", "ci-bot")
    _add(index, "m", "1.0.0")
    assert index.lifecycle.history("m")[0].actor == "ci-bot"


def test_a_move_plan_reads_what_a_move_checks(index: SqlIndex) -> None:
    """The plan a server's client signs (one statement: the target's row and the alias's row)
    refuses what the move would refuse, numbers a first move above the alias's history, and
    shows nothing of a model the reader may not see."""
    from modelkeep.identity import Identity, acting_as

    for v in ("1.0.0", "1.0.1", "1.0.2"):
        _add(index, "m", v)
    lc = index.lifecycle
    with pytest.raises(VersionNotFoundError, match=r"no version '9\.9\.9'"):
        lc.plan_move_with_record("m", "production", "9.9.9")
    with pytest.raises(ModelNotFoundError):
        lc.plan_move_with_record("nope", "production", "1.0.0")
    lc.trash("m", "1.0.2")
    with pytest.raises(VersionNotFoundError, match="in the trash"):
        lc.plan_move_with_record("m", "production", "1.0.2")
    event, record = lc.plan_move_with_record("m", "production", "1.0.0")  # a first move: no alias row
    assert (event["from"], event["version"], record.version) == (None, "1.0.0", "1.0.0")
    lc.set_alias("m", "production", "1.0.0")
    moved = lc.alias_state("m", "production").seq
    event, record = lc.plan_move_with_record("m", "production", "1.0.1", expected="1.0.0")
    assert (event["from"], event["sha256"], record.version) == ("1.0.0", record.artifact.sha256, "1.0.1")  # type: ignore[union-attr]
    assert moved is not None and event["seq"] > moved
    lc.delete_alias("m", "production")  # set again after a removal: numbered above every move so far
    event, _ = lc.plan_move_with_record("m", "production", "1.0.1")
    assert event["from"] is None and event["seq"] > moved
    with acting_as(Identity("outsider", "none", (("other-*", "viewer"),))), pytest.raises(ModelNotFoundError):
        lc.plan_move_with_record("m", "production", "1.0.1")


def test_alias_compare_and_set(index: SqlIndex) -> None:
    for v in ("1.0.0", "1.0.1", "1.0.2"):
        _add(index, "m", v)
    lc = index.lifecycle
    lc.set_alias("m", "production", "1.0.0")
    lc.set_alias("m", "production", "1.0.1", expected="1.0.0")
    with pytest.raises(AliasConflictError, match=r"points at version '1\.0\.1', not '1\.0\.0'"):
        lc.set_alias("m", "production", "1.0.2", expected="1.0.0")
    assert lc.get_aliases("m") == {"production": "1.0.1"}
    assert index.resolve("m", "1.0.1").aliases == ["production"]
    moves = lc.history("m", alias="production")
    assert [(e.before, e.after) for e in moves] == [(None, "1.0.0"), ("1.0.0", "1.0.1")]
    # A removal compares as a move does: "" asks that the alias be absent.
    with pytest.raises(AliasConflictError, match=r"points at version '1\.0\.1', not absent as expected"):
        lc.delete_alias("m", "production", expected="")
    with pytest.raises(AliasConflictError, match=r"points at version '1\.0\.1', not '1\.0\.0' as expected"):
        lc.delete_alias("m", "production", expected="1.0.0")
    assert lc.delete_alias("m", "production") == "1.0.1"
    with pytest.raises(AliasNotFoundError):
        lc.resolve_alias("m", "production")


@pytest.mark.parametrize("bad", ["latest", "1.0", "v2", "", "a/b", "..x", "x" * 65, "@prod"])
def test_bad_alias_names_are_refused(index: SqlIndex, bad: str) -> None:
    _add(index, "m", "1.0.0")
    with pytest.raises(InvalidNameError):
        index.lifecycle.set_alias("m", bad, "1.0.0")
    assert index.lifecycle.get_aliases("m") == {}


def test_alias_needs_a_live_version(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    with pytest.raises(VersionNotFoundError):
        index.lifecycle.set_alias("m", "production", "9.9.9")
    index.lifecycle.trash("m", "1.0.0")
    with pytest.raises(VersionNotFoundError, match="trash"):
        index.lifecycle.set_alias("m", "production", "1.0.0")


def test_trash_hides_a_version_everywhere_but_keeps_its_bytes_referenced(index: SqlIndex) -> None:
    for v in ("1.0.0", "1.0.1", "2.0.0"):
        _add(index, "m", v)
    index.lifecycle.trash("m", "2.0.0")
    assert index.list_versions("m") == ["1.0.0", "1.0.1"]
    assert [r.version for r in index.list_records("m")] == ["1.0.0", "1.0.1"]
    assert index.resolve("m").version == "1.0.1", "latest skips the trash"
    with pytest.raises(VersionNotFoundError, match="in the trash"):
        index.resolve("m", "2.0.0")
    assert {s.name: (s.version_count, s.latest_version) for s in index.summaries()} == {"m": (2, "1.0.1")}
    # Its files are still its own until purged: gc and dedup must see them.
    assert index.count_artifact_refs("m/2.0.0/m_v2.0.0.joblib") == 1
    assert "m/2.0.0/m_v2.0.0.joblib" in index.artifact_keys()
    assert {r.version for r in index.iter_records()} == {"1.0.0", "1.0.1", "2.0.0"}
    # Saving that version again fails clearly; automatic versions never reuse it.
    with pytest.raises(VersionTrashedError, match="in the trash; restore or purge it"), index.reserve("m", "2.0.0"):
        pass
    with pytest.raises(VersionTrashedError), index.reserve("m", "2.0.0", overwrite=True):
        pass
    assert _add(index, "m", None) == "2.0.1"
    index.lifecycle.restore("m", "2.0.0")
    assert index.resolve("m").version == "2.0.1" and "2.0.0" in index.list_versions("m")


def test_trashing_every_version_hides_the_model(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    _add(index, "other", "1.0.0")
    index.lifecycle.trash("m", "1.0.0")
    assert index.list_models() == ["other"]
    assert [s.name for s in index.summaries()] == ["other"]
    with pytest.raises(ModelNotFoundError, match="No versions found for model 'm'"):
        index.resolve("m")


def test_delete_of_an_aliased_version_needs_force(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    _add(index, "m", "1.0.1")
    index.lifecycle.set_alias("m", "production", "1.0.0")
    index.lifecycle.set_alias("m", "champion", "1.0.0")
    with pytest.raises(VersionInUseError, match="champion, production"):
        index.lifecycle.trash("m", "1.0.0")
    assert index.list_versions("m") == ["1.0.0", "1.0.1"]
    index.lifecycle.trash("m", "1.0.0", force=True)
    assert index.lifecycle.get_aliases("m") == {}
    tail = index.lifecycle.history("m")[-3:]
    assert [(e.action, e.alias) for e in tail] == [
        ("alias_delete", "champion"),
        ("alias_delete", "production"),
        ("delete", None),
    ]
    assert tail[-1].after["removed_aliases"] == ["champion", "production"]


def test_tags_on_models_and_versions(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    _add(index, "m", "1.0.1")
    lc = index.lifecycle
    lc.set_tag("m", "team", "risk")
    lc.set_tag("m", "stage", "candidate", version="1.0.1")
    lc.set_tag("m", "stage", "approved", version="1.0.1")
    assert lc.get_tags("m") == {"team": "risk"}
    assert lc.get_tags("m", version="1.0.1") == {"stage": "approved"}
    assert [r.tags for r in index.list_records("m")] == [{}, {"stage": "approved"}]
    lc.delete_tag("m", "stage", version="1.0.1")
    with pytest.raises(KeyError):
        lc.delete_tag("m", "stage", version="1.0.1")
    with pytest.raises(ModelNotFoundError):
        lc.set_tag("ghost", "k", "v")
    with pytest.raises(InvalidNameError):
        lc.set_tag("m", "k", "nul\x00byte")
    tags = [(e.action, e.version, e.key, e.before, e.after) for e in lc.history("m") if e.action.startswith("tag")]
    assert tags == [
        ("tag_set", None, "team", None, "risk"),
        ("tag_set", "1.0.1", "stage", None, "candidate"),
        ("tag_set", "1.0.1", "stage", "candidate", "approved"),
        ("tag_delete", "1.0.1", "stage", "approved", None),
    ]


def test_descriptions(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    lc = index.lifecycle
    lc.set_description("m", "Predicts churn")
    lc.set_description("m", "Retrained on May data", version="1.0.0")
    assert lc.get_description("m") == "Predicts churn"
    assert index.resolve("m").description == "Retrained on May data"
    lc.set_description("m", None, version="1.0.0")
    assert index.resolve("m").description is None
    assert [(e.version, e.before, e.after) for e in lc.history("m") if e.action == "describe"] == [
        (None, None, "Predicts churn"),
        ("1.0.0", None, "Retrained on May data"),
        ("1.0.0", "Retrained on May data", None),
    ]


def test_purge_removes_the_row_tags_and_records_it(index: SqlIndex) -> None:
    _add(index, "m", "1.0.0")
    _add(index, "m", "1.0.1")
    index.lifecycle.set_tag("m", "k", "v", version="1.0.0")
    with pytest.raises(VersionNotFoundError, match="not in the trash"):
        index.delete("m", "1.0.0", trashed_only=True)
    index.lifecycle.trash("m", "1.0.0")
    index.delete("m", "1.0.0", trashed_only=True)
    assert index.get("m", "1.0.0") is None and index.count_artifact_refs("m/1.0.0/m_v1.0.0.joblib") == 0
    assert _actions(index, "m")[-2:] == [("delete", "1.0.0"), ("purge", "1.0.0")]
    _add(index, "m", "1.0.0")  # the name is free again, without the old tags
    assert index.resolve("m", "1.0.0").tags == {}


def test_prune_keeps_the_newest_and_aliased_versions(index: SqlIndex) -> None:
    for v in ("1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0"):
        _add(index, "m", v)
    index.lifecycle.set_alias("m", "production", "1.1.0")
    assert index.lifecycle.prune("m", 2, dry_run=True) == ["1.2.0", "1.0.0"]
    assert index.list_versions("m") == ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0"]
    assert index.lifecycle.prune("m", 2) == ["1.2.0", "1.0.0"]
    assert index.list_versions("m") == ["1.1.0", "2.0.0", "2.1.0"]
    assert [t[1] for t in index.lifecycle.trashed("m")] == ["1.2.0", "1.0.0"]
    with pytest.raises(InvalidNameError):
        index.lifecycle.prune("m", -1)


def test_history_filters_by_model_alias_and_time(index: SqlIndex) -> None:
    _add(index, "a", "1.0.0")
    _add(index, "b", "1.0.0")
    middle = index.lifecycle.history()[-1].at
    index.lifecycle.set_alias("a", "production", "1.0.0")
    assert [e.model_name for e in index.lifecycle.history()] == ["a", "b", "a"]
    assert [e.action for e in index.lifecycle.history("a")] == ["save", "alias_set"]
    assert [e.action for e in index.lifecycle.history(alias="production")] == ["alias_set"]
    assert [e.model_name for e in index.lifecycle.history(since=middle)] == ["b", "a"]
    assert [e.model_name for e in index.lifecycle.history(until=middle)] == ["a"]
    assert [e.action for e in index.lifecycle.history(limit=1)] == ["alias_set"]
    with pytest.raises(InvalidNameError):
        index.lifecycle.history(since="not a date")


def test_reindex_keeps_trash_and_drops_aliases_of_vanished_versions(index: SqlIndex) -> None:
    for v in ("1.0.0", "1.0.1", "1.0.2"):
        _add(index, "m", v)
    index.lifecycle.trash("m", "1.0.0")
    index.lifecycle.set_alias("m", "production", "1.0.2")
    index.replace_all([_record("m", "1.0.0"), _record("m", "1.0.1")])
    assert index.list_versions("m") == ["1.0.1"]
    assert index.lifecycle.get_aliases("m") == {}
    assert _actions(index, "m")[-2:] == [("alias_delete", "1.0.2"), ("reindex", None)]
