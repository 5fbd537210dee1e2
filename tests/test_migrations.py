"""Index schema migrations: an older registry is upgraded in place, a newer one refused.

Runs on SQLite and PostgreSQL. The "older registry" is made by taking a current one
back to schema 1 (the 0.1 layout: no lifecycle tables or columns), so the test
also proves that ``schema.py`` equals "version 1 plus every migration step".
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from modelkeep import IncompatibleRegistryError, ModelPersistence
from modelkeep.index import SqlIndex
from modelkeep.index.migrations import MIGRATIONS, SCHEMA_VERSION, pending
from modelkeep.layout import EVENT_DIR
from tests.conftest import IndexTarget

_V2_TABLES = ("modelkeep_models", "modelkeep_aliases", "modelkeep_tags", "modelkeep_history")
_V2_COLUMNS = ("deleted_at", "description")
_V3_TABLES = ("modelkeep_fields",)
_V4_TABLES = ("modelkeep_claims",)  # write claims
_V5_TABLES = ("modelkeep_users", "modelkeep_tokens")  # UI users and API tokens
_V10_INDEX = "ix_modelkeep_versions_live"  # the models page's live-version count


def _qualify(target: IndexTarget, name: str) -> str:
    return f'"{target.schema}".{name}' if target.schema else name


def _shape(engine: Engine, schema: str | None) -> dict[str, set[str]]:
    insp = inspect(engine)
    return {t: {c["name"] for c in insp.get_columns(t, schema=schema)} for t in insp.get_table_names(schema=schema)}


def _downgrade_to_v1(index: SqlIndex, target: IndexTarget) -> None:
    """Turn a current registry into what 0.1 wrote."""
    with index.engine.begin() as conn:
        for table in _V2_TABLES + _V3_TABLES + _V4_TABLES + _V5_TABLES:
            conn.execute(text(f"DROP TABLE {_qualify(target, table)}"))
        conn.execute(text(f"DROP INDEX {_qualify(target, _V10_INDEX)}"))  # it covers deleted_at
        for column in _V2_COLUMNS:
            conn.execute(text(f"ALTER TABLE {_qualify(target, 'modelkeep_versions')} DROP COLUMN {column}"))
        conn.execute(text(f"UPDATE {_qualify(target, 'modelkeep_info')} SET value = '1' WHERE key = 'schema_version'"))


def _stamp(index: SqlIndex, target: IndexTarget) -> int:
    with index.engine.connect() as conn:
        return int(
            conn.execute(
                text(f"SELECT value FROM {_qualify(target, 'modelkeep_info')} WHERE key = 'schema_version'")
            ).scalar_one()
        )


def _old_registry(index_target: IndexTarget, tmp_path: Path, classifier: Any) -> ModelPersistence:
    p = index_target.persistence(tmp_path / "models")
    p.save(classifier, "churn", "1.0.0", accuracy=0.9)
    p.save(classifier, "churn", "1.1.0", accuracy=0.95)
    p.save(classifier, "fraud", accuracy=0.8)
    _downgrade_to_v1(p.index, index_target)
    p.close()
    shutil.rmtree(tmp_path / "models" / EVENT_DIR)  # schema 1 had no history, so no event files either
    return p


def test_steps_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION
    assert [m.version for m in pending(1)] == list(range(2, SCHEMA_VERSION + 1))
    assert pending(SCHEMA_VERSION) == []


def test_old_registry_is_upgraded_to_the_current_shape(
    index_target: IndexTarget, tmp_path: Path, classifier: Any
) -> None:
    old = _old_registry(index_target, tmp_path, classifier)
    fresh = SqlIndex(f"sqlite:///{tmp_path / 'fresh.db'}") if index_target.kind == "sqlite" else None
    assert "modelkeep_aliases" not in _shape(old.index.engine, index_target.schema)

    upgraded = index_target.persistence(tmp_path / "models")
    try:
        assert _stamp(upgraded.index, index_target) == SCHEMA_VERSION
        shape = _shape(upgraded.index.engine, index_target.schema)
        if fresh is not None:
            assert shape == _shape(fresh.engine, None)
            fresh.close()
        for table in _V2_TABLES + _V4_TABLES + _V5_TABLES:
            assert table in shape
        assert set(_V2_COLUMNS) <= shape["modelkeep_versions"]
        indexes = inspect(upgraded.index.engine).get_indexes("modelkeep_versions", schema=index_target.schema)
        assert _V10_INDEX in {i["name"] for i in indexes}  # step 10 built the models page's index
        assert [(s.name, s.version_count, s.latest_version) for s in upgraded.model_summaries()] == [
            ("churn", 2, "1.1.0"),
            ("fraud", 1, "1.0.0"),
        ]
        # Everything written before the upgrade is still there and loads.
        assert upgraded.list_versions("churn") == ["1.0.0", "1.1.0"]
        assert (
            upgraded.load("churn", "1.0.0").predict([[5.0, 3.5, 1.4, 0.2]]).tolist()
            == classifier.predict([[5.0, 3.5, 1.4, 0.2]]).tolist()
        )
        assert upgraded.verify().ok
        # The step backfilled one models row per model.
        with upgraded.index.engine.connect() as conn:
            names = conn.execute(
                text(f"SELECT model_name FROM {_qualify(index_target, 'modelkeep_models')} ORDER BY model_name")
            ).scalars()
            assert list(names) == ["churn", "fraud"]
        # Step 3 backfilled the searchable fields from the stored records.
        assert [r.version for r in upgraded.search_versions("accuracy >= 0.9", order_by="-accuracy").items] == [
            "1.1.0",
            "1.0.0",
        ]
        # And the upgraded registry keeps working for writes.
        upgraded.save(classifier, "churn")
        assert upgraded.list_versions("churn")[-1] == "1.1.1"
    finally:
        upgraded.close()


def test_fresh_registry_matches_an_upgraded_one_on_postgres_too(index_target: IndexTarget, tmp_path: Path) -> None:
    index = SqlIndex(index_target.url, schema=index_target.schema)
    try:
        assert _stamp(index, index_target) == SCHEMA_VERSION
        shape = _shape(index.engine, index_target.schema)
        assert set(_V2_TABLES) <= set(shape)
    finally:
        index.close()


def test_newer_registry_is_refused(index_target: IndexTarget, tmp_path: Path) -> None:
    index = SqlIndex(index_target.url, schema=index_target.schema)
    with index.engine.begin() as conn:
        conn.execute(
            text(f"UPDATE {_qualify(index_target, 'modelkeep_info')} SET value = :v WHERE key = 'schema_version'"),
            {"v": str(SCHEMA_VERSION + 1)},
        )
    index.close()
    with pytest.raises(IncompatibleRegistryError, match="upgrade modelkeep") as err:
        SqlIndex(index_target.url, schema=index_target.schema)
    assert isinstance(err.value, ValueError)


def test_concurrent_openers_upgrade_once(index_target: IndexTarget, tmp_path: Path, classifier: Any) -> None:
    _old_registry(index_target, tmp_path, classifier)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            index_target.persistence(tmp_path / "models").close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    p = index_target.persistence(tmp_path / "models")
    try:
        assert _stamp(p.index, index_target) == SCHEMA_VERSION
        assert p.list_versions("churn") == ["1.0.0", "1.1.0"]
    finally:
        p.close()


def test_roles_step_turns_editors_into_maintainers_and_keeps_tokens_working(
    index_target: IndexTarget, tmp_path: Path
) -> None:
    """The step that brought writer/maintainer, grants and token ids and expiry: a registry from
    just before it (editors, tokens without ids) opens with its editors as maintainers, and each
    token still signs in, now with an id to revoke it by."""
    from modelkeep.identity import Identity
    from modelkeep.index.migrations import MIGRATIONS

    step = next(m for m in MIGRATIONS if m.upgrade.__name__ == "_roles")
    p = index_target.persistence(tmp_path / "models")
    p.save({"v": 1}, "churn", "1.0.0")
    p.users.add("eddie", None, "maintainer")
    p.users.add("vera", None, "viewer")
    token = p.users.new_token("eddie", "ci")
    users, tokens = _qualify(index_target, "modelkeep_users"), _qualify(index_target, "modelkeep_tokens")
    with p.index.engine.begin() as conn:  # back to the schema before the step, as it wrote them
        conn.execute(text(f"DROP TABLE {_qualify(index_target, 'modelkeep_grants')}"))
        for column in ("token_id", "expires_at"):
            conn.execute(text(f"ALTER TABLE {tokens} DROP COLUMN {column}"))
        conn.execute(text(f"UPDATE {users} SET role = 'editor' WHERE name = 'eddie'"))
        conn.execute(
            text(
                f"UPDATE {_qualify(index_target, 'modelkeep_info')} SET value = '{step.version - 1}'"
                " WHERE key = 'schema_version'"
            )
        )
    p.close()

    upgraded = index_target.persistence(tmp_path / "models")
    assert _stamp(upgraded.index, index_target) == SCHEMA_VERSION
    assert [(u.name, u.role) for u in upgraded.users.list()] == [("eddie", "maintainer"), ("vera", "viewer")]
    (listed,) = upgraded.users.tokens("eddie")
    assert listed.label == "ci" and listed.expires_at is None and len(listed.token_id) == 12
    with ModelPersistence(
        models_dir=upgraded.models_dir, registry_url=upgraded.index.url, index_schema=upgraded.index.schema, token=token
    ) as eddie:
        assert eddie.identity == Identity("eddie", "maintainer")
        eddie.set_alias("churn", "staging", "1.0.0")
    upgraded.users.grant("vera", "churn*", "writer")
    assert upgraded.users.identity("vera") == Identity("vera", "viewer", (("churn*", "writer"),))
    upgraded.users.revoke_token("eddie", listed.token_id)
    assert upgraded.users.tokens("eddie") == []
    upgraded.close()
