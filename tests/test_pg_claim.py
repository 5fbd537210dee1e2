"""A PostgreSQL save's claim in one message, and its checks without a read (issue 29): the claim's
insert sees a claim committed while it waited for the model's lock; the next version it picks is
the one :func:`modelkeep.versions.next_version` picks; a young lease stands for the claim checks,
and a writer whose claim was taken over once the lease ran out still stops before it writes."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from modelkeep import ModelPersistence
from modelkeep.errors import ClaimLostError
from modelkeep.index import claims as claims_module
from modelkeep.index import sql as index_sql
from modelkeep.index.claims import list_claims
from modelkeep.layout import sidecar_bytes, sidecar_key
from modelkeep.versions import next_version

from . import test_pg_round_trips
from .conftest import PG_URL

registry = test_pg_round_trips.registry  # the fixture: a PostgreSQL registry in a schema of its own

pytestmark = pytest.mark.postgres


def _admin_engine() -> Any:
    assert PG_URL is not None
    return create_engine(index_sql.normalize_url(PG_URL))


def test_the_claim_sees_a_claim_committed_while_it_waited_for_the_model_lock(
    registry: ModelPersistence, pg_schema: str
) -> None:
    """The lock is a statement of its own in the claim's message: had the insert's snapshot been
    taken before the lock was granted, it would not see the other claim and would insert 1.0.0
    over it (a unique-key error)."""
    name = f"waiting-{uuid.uuid4().hex[:8]}"  # its lock is no other test's, in this run or another
    engine = _admin_engine()
    outcome: dict[str, Any] = {}
    try:
        with engine.connect() as admin, engine.connect() as watcher:
            tx = admin.begin()
            admin.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", ("modelkeep:" + name,))
            admin.exec_driver_sql(
                f'INSERT INTO "{pg_schema}".modelkeep_claims (model_name, version, token, owner, claimed_at, purpose) '
                "VALUES (%s, '1.0.0', %s, 'elsewhere/ns/1/1', %s, 'save')",
                (name, "0" * 32, time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())),
            )

            def save() -> None:
                try:
                    outcome["record"] = registry.save_version({"v": 1}, name)
                except Exception as exc:  # reported below
                    outcome["error"] = exc

            thread = threading.Thread(target=save)
            thread.start()
            for _ in range(200):  # until the save waits for the model's lock
                waiting = watcher.exec_driver_sql(  # for this model's lock, not for another test's
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND ((classid::bigint << 32) | objid::bigint) = hashtext(%s)::bigint",
                    ("modelkeep:" + name,),
                ).scalar_one()
                if waiting:
                    break
                time.sleep(0.05)
            assert waiting, "the save never waited for the model's lock"
            tx.commit()
            thread.join(60)
        assert "error" not in outcome, outcome
        assert outcome["record"].version == "1.0.1"  # 1.0.0 is the other writer's
    finally:
        engine.dispose()


@pytest.mark.parametrize("top", ["v1.2.3", "1.0.9", "2.0.0-rc1", "1.2", "01.2.3", "1.2.3+build"])
def test_the_next_version_is_the_one_next_version_picks(registry: ModelPersistence, top: str) -> None:
    registry.save_version({"v": 0}, "next", top)
    assert registry.save_version({"v": 1}, "next").version == next_version(top)
    assert list_claims(registry.index) == []


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(claims_module, "CLAIM_LEASE_SECONDS", 1.0)
    return 1.0


def _pause_after_the_claim(
    p: ModelPersistence, monkeypatch: pytest.MonkeyPatch, seconds: float, then: Any
) -> list[tuple[str, str]]:
    """Make ``p``'s next save wait ``seconds`` once its version is claimed, then call ``then()``
    before it writes anything; returns the ``(model, version)`` it claimed."""
    original = type(p)._new_artifact_key
    claimed: list[tuple[str, str]] = []

    def paused(slot: Any, extension: str, taken: Any = None) -> str:
        if not claimed and slot.index is p.index:
            claimed.append((slot.model_name, slot.version))
            time.sleep(seconds)
            then()
        return original(slot, extension, taken)

    monkeypatch.setattr(type(p), "_new_artifact_key", staticmethod(paused))
    return claimed


def _version_files(p: ModelPersistence, model: str, version: str) -> set[str]:
    folder = Path(p.store.display_path(f"{model}/{version}"))
    return {f.name for f in folder.iterdir()}


def test_a_claim_taken_over_after_its_lease_stops_the_old_writer_before_it_writes(
    registry: ModelPersistence, pg_schema: str, tmp_path: Path, short_lease: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's claim outlives its lease before A writes; gc releases it as stale and B saves the same
    version. A stops with ClaimLostError and the version's folder holds B's files only."""
    assert PG_URL is not None
    other = ModelPersistence(models_dir=tmp_path / "models", registry_url=PG_URL, index_schema=pg_schema)
    taken_over_writer_stops(registry, other, short_lease, monkeypatch)


def taken_over_writer_stops(
    registry: ModelPersistence, other: ModelPersistence, lease: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A (``registry``) pauses past its lease once it claimed; gc of ``other`` releases the claim
    and ``other`` saves the same version: A raises ClaimLostError and B's files alone are there
    (also run on SQLite by tests/test_sqlite_claim.py)."""
    b_records: list[Any] = []

    def take_over() -> None:
        report = other.gc(min_age_seconds=0)
        assert report.released_claims, report.to_dict()  # A's, as stale
        b_records.append(other.save_version({"writer": "B"}, "taken", "1.0.0"))

    claimed = _pause_after_the_claim(registry, monkeypatch, lease * 1.2, take_over)
    with pytest.raises(ClaimLostError):
        registry.save_version({"writer": "A"}, "taken")
    monkeypatch.undo()
    assert claimed == [("taken", "1.0.0")]
    (b,) = b_records
    assert registry.load("taken", "1.0.0") == {"writer": "B"}
    assert _version_files(registry, "taken", "1.0.0") == {
        Path(b.artifact.key).name,
        Path(sidecar_key("taken", "1.0.0")).name,
    }
    assert registry.store.read_bytes(sidecar_key("taken", "1.0.0")) == sidecar_bytes(b)
    assert registry.verify().ok, registry.verify().to_dict()
    other.close()


def test_past_half_its_lease_a_writer_reads_its_claim_before_writing(
    registry: ModelPersistence, pg_schema: str, short_lease: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past :data:`LEASE_TRUSTED_FRACTION` of the lease the check reads the database again: a
    claim released meanwhile (by hand here, as gc cannot yet) stops the writer before any file."""
    engine = _admin_engine()

    def release_by_hand() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DELETE FROM "{pg_schema}".modelkeep_claims')

    try:
        late_writer_reads_again(registry, short_lease, monkeypatch, release_by_hand)
    finally:
        engine.dispose()


def late_writer_reads_again(
    registry: ModelPersistence, lease: float, monkeypatch: pytest.MonkeyPatch, release_by_hand: Any
) -> None:
    """``registry``'s save pauses past half its lease once it claimed, and ``release_by_hand()``
    removes the claim: the save reads it again, stops with ClaimLostError and writes nothing
    (also run on SQLite by tests/test_sqlite_claim.py).

    The pause is the claim's clock set back, not a sleep: after a real 0.7 s pause a 1 s lease
    left 0.3 s for the rest of the save, and a loaded machine (two xdist workers) took longer, so
    the lease expired before the read this test is about. So the lease is 60 s here, the claim
    made 0.7 of it old once it is released, and the save has 18 s to reach its read."""
    fraction = claims_module.LEASE_TRUSTED_FRACTION
    lease = max(lease, 60.0)
    monkeypatch.setattr(claims_module, "CLAIM_LEASE_SECONDS", lease)
    original = type(registry)._new_artifact_key
    aged: list[float] = []

    def released_and_aged(slot: Any, extension: str, taken: Any = None) -> str:
        if not aged and slot.index is registry.index:
            release_by_hand()
            slot.taken = time.monotonic() - lease * (fraction + 0.2)  # past the trusted fraction
            aged.append(slot.taken)
        return original(slot, extension, taken)

    monkeypatch.setattr(type(registry), "_new_artifact_key", staticmethod(released_and_aged))
    with pytest.raises(ClaimLostError, match="released"):
        registry.save_version({"writer": "A"}, "late")
    assert aged, "the save never claimed a version"
    monkeypatch.undo()
    assert registry.list_versions("late") == []
    assert not Path(registry.store.display_path("late/1.0.0")).exists()  # nothing was written there


def test_the_row_statement_renders_the_same_without_sqlalchemys_private_cache(
    registry: ModelPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's one-message statement is compiled through SQLAlchemy's private compile cache;
    were that API gone in a later SQLAlchemy, the public compile renders the same SQL (schema
    translated, values quoted) and saves still work."""
    from sqlalchemy import insert

    from modelkeep.index import pg_batch
    from modelkeep.index.schema import tags

    statement = insert(tags).values(model_name="m'; DROP TABLE x; --", version="1.0.0", key="k", value="v")
    with registry.index.engine.connect() as conn:
        cached = pg_batch.literal_sql(conn, statement)
        fallbacks: list[str] = []

        def gone(*_args: Any) -> Any:
            fallbacks.append("public compile")
            raise AttributeError("_compile_w_cache")  # as a later SQLAlchemy without it would

        monkeypatch.setattr(pg_batch, "_cached", gone)
        public = pg_batch.literal_sql(conn, statement)
    assert public == cached and "''; DROP TABLE x; --'" in public and str(registry.index.schema) in public
    registry.save_version({"w": [1, 2, 3]}, "m")  # the row statement through the fallback
    assert len(fallbacks) >= 2 and registry.load("m") == {"w": [1, 2, 3]}
