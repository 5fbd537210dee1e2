"""A SQLite save's claim and its checks without a read (issue 29), as tests/test_pg_claim.py shows
them on PostgreSQL: a young lease stands for the claim checks before the sidecar and the artifact,
a writer whose claim was taken over once the lease ran out still stops before it writes, one past
half its lease reads its claim again, and the claim's insert that finds the next version taken
falls back to looking version by version."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from modelkeep import ModelPersistence
from modelkeep.errors import ConnectionLostError, VersionExistsError
from modelkeep.index import claims as claims_module
from modelkeep.index.claims import VersionClaim, list_claims
from modelkeep.index.common import run

from .test_pg_claim import late_writer_reads_again, taken_over_writer_stops


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelPersistence]:
    with ModelPersistence(models_dir=tmp_path / "models") as p:
        p.ensure_registry()
        yield p


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(claims_module, "CLAIM_LEASE_SECONDS", 1.0)
    return 1.0


def _claim_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of a claim before a file (the checks' own statements), by name."""
    reads: list[str] = []
    for name in ("_read_claim", "_read_token_and_duplicate"):
        real = getattr(claims_module, name)
        monkeypatch.setattr(
            claims_module, name, lambda *a, _real=real, _name=name, **k: (reads.append(_name), _real(*a, **k))[1]
        )
    return reads


def test_a_young_lease_stands_for_the_checks_and_the_dedup_comes_with_the_claim(
    registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _claim_reads(monkeypatch)
    first = registry.save({"same": "bytes"}, "m")
    second = registry.save({"same": "bytes"}, "m")  # identical bytes: a hard link to the first
    assert reads == []
    assert isinstance(first, Path) and isinstance(second, Path)
    assert first != second and first.stat().st_ino == second.stat().st_ino
    assert registry.verify().ok, registry.verify().to_dict()


def test_a_claim_taken_over_after_its_lease_stops_the_old_writer_before_it_writes(
    registry: ModelPersistence, tmp_path: Path, short_lease: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's claim outlives its lease before A writes; gc releases it as stale and B saves the same
    version. A stops with ClaimLostError and the version's folder holds B's files only."""
    taken_over_writer_stops(registry, ModelPersistence(models_dir=tmp_path / "models"), short_lease, monkeypatch)


def test_past_half_its_lease_a_writer_reads_its_claim_before_writing(
    registry: ModelPersistence, tmp_path: Path, short_lease: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past :data:`LEASE_TRUSTED_FRACTION` of the lease the check reads the database again: a
    claim released meanwhile (by hand here, as gc cannot yet) stops the writer before any file."""

    def release_by_hand() -> None:
        with sqlite3.connect(tmp_path / "models" / "registry.db") as db:
            db.execute("DELETE FROM modelkeep_claims")

    late_writer_reads_again(registry, short_lease, monkeypatch, release_by_hand)


def test_a_claim_whose_next_version_has_a_row_looks_version_by_version(
    registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's insert inserts nothing when the version it was given has a row (here the
    version picker is made to offer a taken one once); the claim is then taken as before."""
    registry.save_version({"v": 0}, "m")
    real = claims_module.next_version
    offered: list[str] = []

    def offer_a_taken_one(highest: Any, taken: Any) -> str:
        if not offered:
            offered.append("1.0.0")
            return "1.0.0"  # has a row: the insert must insert nothing
        return real(highest, taken)

    monkeypatch.setattr(claims_module, "next_version", offer_a_taken_one)
    assert registry.save_version({"v": 1}, "m").version == "1.0.1"
    assert offered == ["1.0.0"]
    assert registry.load("m", "1.0.0") == {"v": 0} and registry.load("m", "1.0.1") == {"v": 1}
    assert list_claims(registry.index) == []


# -- the save's statements sent straight to the driver (index/common.py: run, send) -----------------


def test_a_row_written_without_a_claim_still_fails_the_save_through_the_driver(
    registry: ModelPersistence, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's insert goes to the driver's cursor: the unique index's error is still raised as
    SQLAlchemy's IntegrityError, which the save turns into VersionExistsError, and nothing of the
    save is registered (the hand-written row carries another version's record: its claim is left
    for gc, as before)."""
    registry.save({"v": 0}, "unclaimed")
    check_placing = VersionClaim.check_placing

    def then_row_by_hand(self: VersionClaim, sha256: str, key: str, **options: Any) -> str | None:
        found = check_placing(self, sha256, key, **options)
        with sqlite3.connect(tmp_path / "models" / "registry.db") as db:
            db.execute(
                "INSERT INTO modelkeep_versions (model_name, version, parsed, sort_key, model_type, artifact_key, "
                "format, size, sha256, created_at, updated_at, record) SELECT model_name, ?, parsed, sort_key, "
                "model_type, artifact_key, format, size, sha256, created_at, updated_at, record "
                "FROM modelkeep_versions WHERE version = '1.0.0'",
                (self.version,),
            )
        return found

    with sqlite3.connect(tmp_path / "models" / "registry.db") as db:
        history = db.execute("SELECT count(*) FROM modelkeep_history").fetchone()[0]
    monkeypatch.setattr(VersionClaim, "check_placing", then_row_by_hand)
    with pytest.raises(VersionExistsError, match="without a claim"):
        registry.save({"v": 1}, "unclaimed")
    monkeypatch.undo()
    with sqlite3.connect(tmp_path / "models" / "registry.db") as db:
        assert db.execute("SELECT count(*) FROM modelkeep_history").fetchone()[0] == history
    assert registry.load("unclaimed", "1.0.0") == {"v": 0}


def test_a_closed_driver_connection_is_a_lost_connection_and_the_save_retries(registry: ModelPersistence) -> None:
    """A statement sent to a closed driver connection raises what SQLAlchemy raises for it (a
    DBAPIError with the connection invalidated, so the index says ConnectionLostError), and the
    pool's next connection works: the claim transaction is retried and the save lands."""
    registry.save({"v": 0}, "m")
    with registry.index.engine.connect() as conn:
        conn.connection.dbapi_connection.close()  # type: ignore[union-attr]
        with pytest.raises(DBAPIError) as caught:
            run(conn, claims_module._DUPLICATES, {"sha256": "0" * 64})
        assert caught.value.connection_invalidated
    with registry.index.engine.connect() as conn:  # the invalidated connection was replaced
        conn.connection.dbapi_connection.close()  # type: ignore[union-attr]
    # the pooled connection is closed under the pool: the claim's BEGIN (sent to the driver) fails,
    # is retried on a new connection, and the save lands
    assert registry.save_version({"v": 1}, "m").version == "1.0.1"
    assert list_claims(registry.index) == []
    with pytest.raises(ConnectionLostError), registry.index._write() as conn:
        conn.connection.dbapi_connection.close()  # type: ignore[union-attr]
        run(conn, claims_module._DROP_CLAIM, {"token": "x"})


def test_the_driver_returns_what_sqlalchemy_returns(registry: ModelPersistence) -> None:
    """The claim's read of the model's claims and highest version, the dedup lookup and the
    inserted row's id, through the driver and through SQLAlchemy: the same rows."""
    first = registry.save_version({"v": 0}, "m")
    registry.save_version({"v": 1}, "m")
    assert first.artifact is not None
    cases = [
        (claims_module._CLAIMS_AND_TOP, {"model_name": "m"}),
        (claims_module._DUPLICATES, {"sha256": first.artifact.sha256}),
        (claims_module._VERSION_EXISTS, {"model_name": "m", "version": "1.0.1"}),
    ]
    with registry.index.engine.connect() as conn:
        for statement, params in cases:
            assert [tuple(r) for r in run(conn, statement, params).all()] == [
                tuple(r) for r in conn.execute(statement, params).all()
            ]
        assert run(conn, claims_module._CLAIMS_AND_TOP, {"model_name": "m"}).first().top == "1.0.1"
