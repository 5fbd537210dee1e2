"""Registries written by earlier releases open, upgrade, load and verify with the current code.

``tests/data/registry_0_1/`` was written by modelkeep 0.1 (see
``tests/data/make_registry_0_1.py``): a SQLite index, artifacts in the joblib,
pickle and native formats, a shared blob, sidecars, and one signed version.
Each test opens a copy. On PostgreSQL the 0.1 tables are created in the test's
schema, exactly as 0.1 defined them (frozen below, not imported from the
current code), and the rows are copied over from the SQLite file.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    func,
    insert,
    select,
    text,
)

from modelkeep import ModelPersistence, quarantine, signing
from modelkeep.index.sql import normalize_url

from .conftest import PG_URL

DATA = Path(__file__).resolve().parent / "data"
STORE_0_1 = DATA / "registry_0_1"
#: What the generator listed: model -> [{version, format, compression}].
SUMMARY_0_1: dict[str, list[dict[str, Any]]] = json.loads((DATA / "registry_0_1.json").read_text())
#: The key the generator signed ``signed`` 1.0.0 with.
SIGNING_KEY_0_1 = "modelkeep-0.1-test-data-key"


def tables_0_1() -> MetaData:
    """The index tables exactly as modelkeep 0.1 created them (index/schema.py at 0.1)."""
    md = MetaData()
    Table(
        "modelkeep_versions",
        md,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("model_name", String(128), nullable=False),
        Column("version", String(64), nullable=False),
        Column("parsed", Boolean, nullable=False),
        Column("sort_key", LargeBinary(512), nullable=True),
        Column("model_type", String(256), nullable=False),
        Column("artifact_key", String(1024), nullable=False),
        Column("format", String(32), nullable=False),
        Column("compression", String(32), nullable=True),
        Column("size", BigInteger, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("created_at", String(40), nullable=False),
        Column("updated_at", String(40), nullable=False),
        Column("record", Text, nullable=False),
        UniqueConstraint("model_name", "version", name="uq_modelkeep_versions_model_version"),
    )
    Table(
        "modelkeep_info",
        md,
        Column("key", String(64), primary_key=True),
        Column("value", String(256), nullable=False),
    )
    Table(
        "modelkeep_blob_refs",
        md,
        Column("model_name", String(128), nullable=False),
        Column("version", String(64), nullable=False),
        Column("sha256", String(64), nullable=False),
        UniqueConstraint("model_name", "version", "sha256", name="uq_modelkeep_blob_refs"),
    )
    return md


def _copy_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(STORE_0_1, store)
    for path in store.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)  # git checkouts and 0.1's blobs may be read-only
    return store


def _copy_index_to_postgres(sqlite_file: Path, schema: str) -> None:
    """Create the 0.1 tables in ``schema`` and copy every row of the 0.1 SQLite index into them."""
    assert PG_URL is not None
    md = tables_0_1()
    source = create_engine(f"sqlite:///{sqlite_file}")
    dest = create_engine(normalize_url(PG_URL)).execution_options(schema_translate_map={None: schema})
    with source.connect() as src, dest.begin() as dst:
        md.create_all(dst)
        for table in md.sorted_tables:
            rows = [dict(r._mapping) for r in src.execute(select(table))]
            if rows:
                dst.execute(insert(table), rows)
        top = dst.execute(select(func.max(md.tables["modelkeep_versions"].c.id))).scalar()
        dst.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{schema}\".modelkeep_versions', 'id'), {top})"))
    source.dispose()
    dest.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """How to open a copy of the 0.1 registry with the current code, on each index backend."""
    store = _copy_store(tmp_path)
    if request.param == "sqlite":
        yield {"models_dir": store}
        return
    schema: str = request.getfixturevalue("pg_schema")
    index_file = store / "registry.db"
    _copy_index_to_postgres(index_file, schema)
    index_file.unlink()  # the PostgreSQL index is the only one
    yield {"models_dir": store, "registry_url": PG_URL, "index_schema": schema}


def _current_schema_version() -> int:
    """The schema this code writes: the migrations' last step once they exist, else schema.py's."""
    import importlib
    import importlib.util

    where = "modelkeep.index.migrations" if importlib.util.find_spec("modelkeep.index.migrations") else None
    module = importlib.import_module(where or "modelkeep.index.schema")
    return int(module.SCHEMA_VERSION)


def _schema_version(p: ModelPersistence) -> int:
    from modelkeep.index.schema import info

    with p.index.engine.connect() as conn:
        return int(conn.execute(select(info.c.value).where(info.c.key == "schema_version")).scalar_one())


def _check_loaded(name: str, model: Any) -> None:
    X = np.random.default_rng(1).normal(size=(40, 3))
    if name == "prices" and isinstance(model, dict):
        np.testing.assert_array_equal(model["weights"], np.arange(5000, dtype=np.float64))
        assert model["labels"] == ["a", "b"] and model["n"] == 3
    else:
        assert model.predict(X).shape == (40,)


def test_0_1_registry_opens_upgrades_loads_and_verifies(old_registry: dict[str, Any]) -> None:
    # The old, unsigned versions load through the quarantine child on SQLite, and on PostgreSQL in
    # this process only (the index backend plays no part in loading them; a child costs seconds).
    on_postgres = "index_schema" in old_registry
    children = quarantine.children_started()
    with ModelPersistence(**old_registry, create=False, quarantine="never" if on_postgres else "auto") as p:
        assert _schema_version(p) == _current_schema_version()
        assert p.list_models() == sorted(SUMMARY_0_1)
        for name, versions in SUMMARY_0_1.items():
            records = p.list_version_records(name)
            assert [(r.version, r.artifact.format, r.artifact.compression) for r in records if r.artifact] == [
                (v["version"], v["format"], v["compression"]) for v in versions
            ]
            for record in records:
                if record.signature:
                    continue  # loaded below with the key it was signed with
                _check_loaded(name, p.load(name, record.version))
        assert (quarantine.children_started() > children) is not on_postgres
        report = p.verify()
        assert report.ok, report.to_dict()
        assert report.versions_checked == sum(len(v) for v in SUMMARY_0_1.values())
        assert report.blobs_checked == 1

        # The registry keeps working: new versions go after the old ones.
        rec = p.save_version({"weights": np.arange(3)}, "prices", serialization_format="native")
        assert rec.version == "1.2.1"
        assert p.list_versions("prices")[-1] == "1.2.1"
        assert p.verify().ok

    with ModelPersistence(**old_registry, create=False, signing_key=SIGNING_KEY_0_1) as signed:
        model, record = signed.load("signed", return_metadata=True)
        signing.verify(record, SIGNING_KEY_0_1)
        _check_loaded("signed", model)


# -- upgrade, then rebuild from the store alone (event files: schema 7) ------------------------
STORE_0_2 = DATA / "registry_0_2"
#: What make_registry_0_2.py listed: model -> versions, aliases, tags, description, history.
SUMMARY_0_2: dict[str, Any] = json.loads((DATA / "registry_0_2.json").read_text())


def _lose_index(registry: dict[str, Any]) -> None:
    """Delete ``registry.db``, or drop and recreate the PostgreSQL schema."""
    if "index_schema" not in registry:
        (registry["models_dir"] / "registry.db").unlink()
        return
    engine = create_engine(normalize_url(registry["registry_url"]))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{registry["index_schema"]}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{registry["index_schema"]}"'))
    engine.dispose()


def test_0_1_registry_upgrades_then_rebuilds_from_its_store(old_registry: dict[str, Any]) -> None:
    """0.1 had no lifecycle: after the upgrade, what is set from then on survives losing the index."""
    with ModelPersistence(**old_registry, create=False) as p:
        p.set_alias("churn", "production", "1.0.1")
        p.set_tag("prices", "team", "pricing")
        p.delete("churn", "1.0.0")
        history = [(e.id, e.at, e.actor, e.action) for e in p.history()]
    _lose_index(old_registry)
    with ModelPersistence(**old_registry) as p:
        assert p.reindex() == sum(len(v) for v in SUMMARY_0_1.values())
        assert p.get_aliases("churn") == {"production": "1.0.1"}
        assert p.get_tags("prices") == {"team": "pricing"}
        assert [v for m, v, _ in p.list_trash()] == ["1.0.0"]
        assert [(e.id, e.at, e.actor, e.action) for e in p.history() if e.action != "reindex"] == history
        assert p.verify().ok


def _copy_0_2_index_to_postgres(sqlite_file: Path, schema: str) -> None:
    """The 0.2 tables, as 0.2 created them in its SQLite file (read back by reflection, with
    SQLite's BLOB and DOUBLE as PostgreSQL's bytea and double precision), created in ``schema``,
    and every row copied over."""
    assert PG_URL is not None
    from sqlalchemy import BLOB, DOUBLE, Double, LargeBinary

    source = create_engine(f"sqlite:///{sqlite_file}")
    md = MetaData()
    md.reflect(source)
    for table in md.tables.values():
        for column in table.columns:
            if isinstance(column.type, BLOB):
                column.type = LargeBinary()
            elif isinstance(column.type, DOUBLE):
                column.type = Double()
    dest = create_engine(normalize_url(PG_URL)).execution_options(schema_translate_map={None: schema})
    with source.connect() as src, dest.begin() as dst:
        md.create_all(dst)
        for table in md.sorted_tables:
            rows = [dict(r._mapping) for r in src.execute(select(table))]
            if rows:
                dst.execute(insert(table), rows)
        for name in ("modelkeep_versions", "modelkeep_history"):  # go on numbering above the copied rows
            top = dst.execute(select(func.max(md.tables[name].c.id))).scalar() or 0
            dst.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{schema}\".{name}', 'id'), {top + 1}, false)"))
    source.dispose()
    dest.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_0_2(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """How to open a copy of the 0.2 registry (schema 6, history rows only in its index) with
    the current code, on each index backend."""
    store = tmp_path / "store"
    shutil.copytree(STORE_0_2, store)
    for path in store.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    if request.param == "sqlite":
        yield {"models_dir": store}
        return
    schema: str = request.getfixturevalue("pg_schema")
    _copy_0_2_index_to_postgres(store / "registry.db", schema)
    (store / "registry.db").unlink()  # the PostgreSQL index is the only one
    yield {"models_dir": store, "registry_url": PG_URL, "index_schema": schema}


def test_0_2_registry_writes_its_history_out_and_rebuilds_from_its_store(registry_0_2: dict[str, Any]) -> None:
    """A registry of the release before event files: its history rows are only in its index
    (SQLite, or PostgreSQL). It opens and verifies as it is; the first write puts every old
    row in the store, so that losing the index afterwards loses nothing."""

    def answers(p: ModelPersistence) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: {
                "versions": p.list_versions(name),
                "aliases": p.get_aliases(name),
                "tags": p.get_tags(name),
                "description": p.get_description(name),
                "history": [
                    [e.at, e.actor, e.action, e.version, e.alias, e.key]
                    for e in p.history(name)
                    if e.action != "reindex"
                ],
            }
            for name in p.list_models()
        }
        out["trash"] = [list(t) for t in p.list_trash()]
        return out

    with ModelPersistence(**registry_0_2, create=False) as p:
        assert answers(p) == SUMMARY_0_2
        assert p.verify().ok
        assert p.get_tags("churn", version="1.0.2") == {"approved": "yes"}
        p.set_tag("fraud", "team", "risk")  # the first write: every old row gets its event file
        assert len(p.store.list_keys(".events")) == len(p.history())
        assert p.verify().ok
        expected = answers(p)
    _lose_index(registry_0_2)
    with ModelPersistence(**registry_0_2) as p:
        p.reindex()
        assert answers(p) == expected
        assert p.get_tags("churn", version="1.0.2") == {"approved": "yes"}
        assert p.get_description("churn", version="1.0.2") == "the good one"
        assert p.load("churn@production") == {"churn": 2}
        assert p.verify().ok
