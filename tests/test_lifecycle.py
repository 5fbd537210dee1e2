"""The lifecycle API on ModelPersistence, on SQLite and PostgreSQL: aliases in load and
compare, purge and gc of the trash (with dedup and blob references), the history,
registries upgraded from schema 1, and listing without a query per version."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from modelkeep import (
    AliasNotFoundError,
    InvalidNameError,
    ModelPersistence,
    VersionInUseError,
    VersionNotFoundError,
    VersionTrashedError,
)
from modelkeep.lifecycle import parse_age

from .conftest import IndexTarget
from .test_migrations import _downgrade_to_v1

#: Also run through a registry server (conftest.pytest_generate_tests).
ALSO_OVER_HTTP = True


def test_load_get_and_compare_by_alias(persistence: ModelPersistence) -> None:
    for i in range(3):
        persistence.save({"i": i}, "churn", accuracy=0.8 + i / 100)
    persistence.set_alias("churn", "production", "1.0.1")
    assert persistence.load("churn@production") == {"i": 1}
    assert persistence.load("churn", alias="production") == {"i": 1}
    assert persistence.load("churn", "@production") == {"i": 1}
    _model, meta = persistence.load("churn@production", return_metadata=True)
    assert meta.version == "1.0.1" and meta.aliases == ["production"]
    assert persistence.get_metadata("churn", alias="production").version == "1.0.1"  # type: ignore[union-attr]
    assert persistence.resolve_version("churn@production") == "1.0.1"
    assert persistence.get_metadata("churn", alias="staging") is None
    with pytest.raises(AliasNotFoundError, match="no alias 'staging'"):
        persistence.load("churn@staging")
    with pytest.raises(InvalidNameError, match=r"points at version '1\.0\.1', not '1\.0\.2'"):
        persistence.get_version("churn@production", "1.0.2")
    assert persistence.get_version("churn@production", "1.0.1").version == "1.0.1"
    table = persistence.compare_versions("churn", ["@production", "1.0.2"])
    assert table["version"].tolist() == ["1.0.1", "1.0.2"]


def test_metadata_lifecycle_fields_are_not_signed_or_in_the_sidecar(tmp_path: Path) -> None:
    with ModelPersistence(tmp_path / "models", signing_key="k" * 32) as p:
        p.save({"a": 1}, "m", "1.0.0")
        signed = p.get_version("m", "1.0.0").signature
        p.set_alias("m", "production", "1.0.0")
        p.set_tag("m", "stage", "prod", version="1.0.0")
        p.set_description("m", "first", version="1.0.0")
        rec = p.get_version("m@production")
        assert (rec.aliases, rec.tags, rec.description) == (["production"], {"stage": "prod"}, "first")
        assert "aliases" not in rec.to_dict() and "tags" not in rec.to_dict()
        assert rec.signature == signed
        assert p.load("m@production") == {"a": 1}  # the signature still verifies
        assert p.verify().ok  # the sidecar still matches the index


def test_delete_restore_purge_round_trip(persistence: ModelPersistence) -> None:
    path = persistence.save({"v": 1}, "m", "1.0.0")
    persistence.save({"v": 2}, "m", "1.0.1")
    persistence.delete("m", "1.0.0")
    assert path.exists() and persistence.list_versions("m") == ["1.0.1"]
    with pytest.raises(VersionNotFoundError, match="in the trash"):
        persistence.load("m", "1.0.0")
    with pytest.raises(VersionTrashedError, match="in the trash; restore or purge it"):
        persistence.save({"v": 3}, "m", "1.0.0")
    with pytest.raises(VersionTrashedError):
        persistence.save({"v": 3}, "m", "1.0.0", overwrite=True)
    assert persistence.verify().ok, "a trashed version's files are not orphans"
    persistence.gc(min_age_seconds=0)
    assert path.exists(), "gc keeps a trashed version's files"
    persistence.restore("m", "1.0.0")
    assert persistence.load("m", "1.0.0") == {"v": 1}
    with pytest.raises(VersionNotFoundError, match="not in the trash"):
        persistence.restore("m", "1.0.0")
    with pytest.raises(VersionNotFoundError, match="not in the trash"):
        persistence.purge("m", "1.0.0")
    persistence.delete("m", "1.0.0")
    assert persistence.list_trash("m")[0][:2] == ("m", "1.0.0")
    assert persistence.purge("m", "1.0.0") == [("m", "1.0.0")]
    assert not path.exists() and not path.parent.exists()
    persistence.save({"v": 3}, "m", "1.0.0")  # purged: the version can be saved again
    actions = [(e.action, e.version) for e in persistence.history("m")]
    assert actions == [
        ("save", "1.0.0"),
        ("save", "1.0.1"),
        ("delete", "1.0.0"),
        ("restore", "1.0.0"),
        ("delete", "1.0.0"),
        ("purge", "1.0.0"),
        ("save", "1.0.0"),
    ]


def test_force_delete_of_production(persistence: ModelPersistence) -> None:
    persistence.save({"v": 1}, "m", "1.0.0")
    persistence.set_alias("m", "production", "1.0.0")
    with pytest.raises(VersionInUseError, match="production"):
        persistence.delete("m", "1.0.0")
    persistence.delete("m", "1.0.0", force=True)
    assert persistence.get_aliases("m") == {}
    assert [e.action for e in persistence.alias_history("m", "production")] == ["alias_set", "alias_delete"]


def test_purge_keeps_bytes_another_version_shares(persistence: ModelPersistence) -> None:
    a = persistence.save({"same": 1}, "m", "1.0.0")
    b = persistence.save({"same": 1}, "m", "1.0.1")
    persistence.delete("m", "1.0.1")
    persistence.purge("m")
    assert a.exists() and not b.exists()
    assert persistence.load("m", "1.0.0") == {"same": 1}
    assert persistence.verify().ok


def test_purge_respects_blob_references(index_target: IndexTarget, tmp_path: Path) -> None:
    import numpy as np

    arrays = {"w": np.arange(200_000, dtype=np.float64)}
    with index_target.persistence(tmp_path / "models", serialization_format="native") as p:
        p.save(arrays, "a")
        p.save(arrays, "b")
        blobs = sorted((tmp_path / "models" / ".blobs").rglob("*"))
        p.delete("a", "1.0.0")
        p.purge("a", "1.0.0")
        assert sorted((tmp_path / "models" / ".blobs").rglob("*")) == blobs, "b still uses the blobs"
        assert np.array_equal(p.load("b")["w"], arrays["w"])
        p.delete("b", "1.0.0")
        assert p.index.get("b", "1.0.0") is not None and p.list_versions("b") == []
        p.gc(min_age_seconds=0)
        assert sorted((tmp_path / "models" / ".blobs").rglob("*")) == blobs, "trashed b keeps its blobs through gc"
        p.purge()
        assert [f for f in (tmp_path / "models" / ".blobs").rglob("*") if f.is_file()] == []
        assert p.verify().ok


def test_gc_purges_old_trash_only(persistence: ModelPersistence) -> None:
    old = persistence.save({"v": 1}, "m", "1.0.0")
    persistence.save({"v": 2}, "m", "1.0.1")
    persistence.delete("m", "1.0.0")
    report = persistence.gc(purge_deleted_older_than="1d", min_age_seconds=0)
    assert report.purged == [] and old.exists()
    time.sleep(0.05)  # "older than 10 ms" must really be true of the trash below
    dry = persistence.gc(purge_deleted_older_than=0.01, dry_run=True)
    assert dry.purged == [("m", "1.0.0")] and old.exists()
    report = persistence.gc(purge_deleted_older_than=dt.timedelta(milliseconds=10), min_age_seconds=0)
    assert report.purged == [("m", "1.0.0")] and report.to_dict()["purged"] == [["m", "1.0.0"]]
    assert not old.exists() and persistence.verify().ok


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45", 45)])
def test_parse_age(text: str, seconds: float) -> None:
    assert parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["-1d", "soon", "3x", True])
def test_parse_age_refuses_nonsense(bad: Any) -> None:
    with pytest.raises(InvalidNameError):
        parse_age(bad)


def test_alias_at_answers_what_was_in_production(persistence: ModelPersistence) -> None:
    for _ in range(3):
        persistence.save({"x": 1}, "churn")
    before_any = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.01)
    persistence.set_alias("churn", "production", "1.0.0")
    first = persistence.alias_history("churn", "production")[-1].at
    persistence.set_alias("churn", "production", "1.0.2", expected="1.0.0")
    second = persistence.alias_history("churn", "production")[-1].at
    persistence.delete_alias("churn", "production")
    assert persistence.alias_at("churn", "production", before_any) is None
    # alias_at(when) is the state just before `when`: at the instant of a move, the old value.
    just_after_first = dt.datetime.fromisoformat(first) + dt.timedelta(microseconds=1)
    assert persistence.alias_at("churn", "production", just_after_first) == "1.0.0"
    assert (
        persistence.alias_at("churn", "production", dt.datetime.fromisoformat(second) + dt.timedelta(microseconds=1))
        == "1.0.2"
    )
    assert persistence.alias_at("churn", "production", dt.datetime.now(dt.timezone.utc)) is None
    assert [(e.before, e.after) for e in persistence.alias_history("churn", "production")] == [
        (None, "1.0.0"),
        ("1.0.0", "1.0.2"),
        ("1.0.2", None),
    ]


def test_prune_through_the_api(persistence: ModelPersistence) -> None:
    for _ in range(5):
        persistence.save({"x": 1}, "m")
    persistence.set_alias("m", "production", "1.0.0")
    assert persistence.prune("m", keep_last=2) == ["1.0.2", "1.0.1"]
    assert persistence.list_versions("m") == ["1.0.0", "1.0.3", "1.0.4"]
    assert persistence.prune("m", keep_last=2) == []


def test_listing_versions_with_aliases_and_tags_costs_a_fixed_number_of_queries(
    persistence: ModelPersistence,
) -> None:
    def queries_for(n: int) -> int:
        name = f"m{n}"
        for i in range(n):
            persistence.save({"i": i}, name)
            persistence.set_tag(name, "seq", str(i), version=f"1.0.{i}")
        persistence.set_alias(name, "production", "1.0.0")
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(args[2])

        event.listen(persistence.index.engine, "before_cursor_execute", count)
        try:
            records = persistence.list_version_records(name)
        finally:
            event.remove(persistence.index.engine, "before_cursor_execute", count)
        assert [r.tags["seq"] for r in records] == [str(i) for i in range(n)]
        assert records[0].aliases == ["production"]
        return len(statements)

    assert queries_for(2) == queries_for(12)


def test_lifecycle_on_a_registry_upgraded_from_schema_1(
    index_target: IndexTarget, tmp_path: Path, classifier: Any
) -> None:
    with index_target.persistence(tmp_path / "models") as p:
        p.save(classifier, "churn", "1.0.0")
        p.save(classifier, "churn", "1.1.0")
        _downgrade_to_v1(p.index, index_target)
    with index_target.persistence(tmp_path / "models") as p:
        p.set_alias("churn", "production", "1.0.0")
        p.set_tag("churn", "team", "risk")
        p.set_description("churn", "upgraded", version="1.1.0")
        assert p.load("churn@production").predict([[5.0, 3.5, 1.4, 0.2]]).shape == (1,)
        with pytest.raises(VersionInUseError):
            p.delete("churn", "1.0.0")
        p.delete("churn", "1.1.0")
        assert p.list_versions("churn") == ["1.0.0"]
        p.restore("churn", "1.1.0")
        assert p.get_version("churn").description == "upgraded"
        assert [e.action for e in p.history("churn")] == ["alias_set", "tag_set", "describe", "delete", "restore"]
